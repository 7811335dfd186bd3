"""inference_davis.py: annotator grouping, the id map, palette PNGs end to end on a tiny converted Ref-DAVIS17,
and --eval_only on hand-made result folders."""
import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference_davis
from datasets.errors import DatasetFormatError
from models import build_model
from inference.predictor import Predictor
from models.pretrained import load_pretrained
from tests.cli_help import assert_help_explains_every_flag
from util.config import load_config
from util.davis_palette import davis_palette, palette_png_bytes

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "refshapes_tiny.yaml"
FRAMES = ["00000", "00001", "00002"]
HEIGHT, WIDTH = 24, 40
# video -> number of objects (ids 1..N)
VIDEOS = {"bear": 2, "cows": 1}


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = inference_davis.main(argv)
    return code, out.getvalue()


def object_labels(num_objects: int, frame: int) -> np.ndarray:
    """Object o + 1 is a vertical band that moves one pixel per frame."""
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    for index in range(num_objects):
        left = 4 + 14 * index + frame
        labels[4:20, left:left + 8] = index + 1
    return labels


@pytest.fixture(scope="module")
def davis(tmp_path_factory) -> tuple[Path, Path]:
    """(converted Ref-YTVOS-layout root, DAVIS root) of two tiny videos with 4 expressions per object."""
    base = tmp_path_factory.mktemp("davis")
    converted, davis_root = base / "ref-davis", base / "DAVIS"
    rng = np.random.default_rng(0)
    meta = {}
    for video, num_objects in VIDEOS.items():
        for folder in (converted / "valid" / "JPEGImages" / video, converted / "valid" / "Annotations" / video,
                       davis_root / "Annotations_unsupervised" / "480p" / video):
            folder.mkdir(parents=True)
        for index, frame in enumerate(FRAMES):
            image = (rng.random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)
            Image.fromarray(image).save(converted / "valid" / "JPEGImages" / video / f"{frame}.jpg")
            png = palette_png_bytes(object_labels(num_objects, index))
            (converted / "valid" / "Annotations" / video / f"{frame}.png").write_bytes(png)
            (davis_root / "Annotations_unsupervised" / "480p" / video / f"{frame}.png").write_bytes(png)
        expressions = {str(4 * obj + a): {"exp": f"object {obj} by annotator {a}", "obj_id": str(obj + 1)}
                       for obj in range(num_objects) for a in range(4)}
        meta[video] = {"expressions": expressions, "frames": FRAMES}
    (converted / "meta_expressions" / "valid").mkdir(parents=True)
    (converted / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps({"videos": meta}))
    (davis_root / "ImageSets" / "2017").mkdir(parents=True)
    (davis_root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(VIDEOS) + "\n")
    return converted, davis_root


def test_annotator_sentences_follow_the_conversion_order():
    expressions = {str(i): {"exp": f"e{i}"} for i in range(8)}
    assert inference_davis.annotator_sentences("v", expressions) == [
        ["e0", "e4"], ["e1", "e5"], ["e2", "e6"], ["e3", "e7"]]
    with pytest.raises(DatasetFormatError, match="6 expressions"):
        inference_davis.annotator_sentences("v", {str(i): {"exp": "x"} for i in range(6)})
    with pytest.raises(DatasetFormatError, match=r"lacks expressions \['4'\]"):
        inference_davis.annotator_sentences("v", {str(i): {"exp": "x"} for i in (0, 1, 2, 3, 5, 6, 7, 8)})


def test_object_ids_thresholds_and_background():
    probabilities = np.array([[[[0.3, 0.6, 0.6, 0.5, 0.05]]],
                              [[[0.2, 0.2, 0.9, 0.4, 0.49]]]], dtype=np.float32)  # [O=2, T=1, H=1, W=5]
    np.testing.assert_array_equal(inference_davis.object_ids(probabilities), [[[0, 1, 2, 1, 0]]])


@pytest.fixture(scope="module")
def predictor_dir(tiny_weights, tmp_path_factory) -> Path:
    cfg = load_config(CONFIG)
    cfg["weights"] = str(tiny_weights)
    cfg["data"]["test_size"] = cfg["data"]["max_size"] = 32
    torch.manual_seed(0)
    model, _ = build_model(cfg, load_pretrained(tiny_weights))
    return Predictor(model, cfg).save_pretrained(tmp_path_factory.mktemp("model") / "hcd")


def test_inference_writes_palette_pngs_per_annotator_and_evaluates(davis, predictor_dir, tiny_weights, tmp_path):
    converted, davis_root = davis
    code, out = run(["--checkpoint", str(predictor_dir), "--weights", str(tiny_weights), "--data_root",
                     str(converted), "--output_dir", str(tmp_path), "--clip_len", "2", "--davis_root",
                     str(davis_root)])
    assert code == 0
    predictor = Predictor.from_pretrained(predictor_dir, tiny_weights)
    meta = json.loads((converted / "meta_expressions" / "valid" / "meta_expressions.json").read_text())["videos"]
    for annotator in range(4):
        for video, num_objects in VIDEOS.items():
            folder = tmp_path / f"anno_{annotator}" / video
            assert sorted(path.name for path in folder.iterdir()) == [f"{frame}.png" for frame in FRAMES]
            for frame in FRAMES:
                with Image.open(folder / f"{frame}.png") as png:
                    assert png.mode == "P" and png.size == (WIDTH, HEIGHT)
                    assert png.getpalette()[:30] == davis_palette()[:30]
                    assert np.asarray(png).max() <= num_objects
    # The ids of one annotator's two objects, recomputed with the API.
    frames = [Image.open(converted / "valid" / "JPEGImages" / "bear" / f"{frame}.jpg") for frame in FRAMES]
    sentences = [meta["bear"]["expressions"][exp_id]["exp"] for exp_id in ("1", "5")]
    expected = inference_davis.object_ids(predictor.probabilities(frames, sentences, clip_len=2))
    for frame, frame_ids in zip(FRAMES, expected):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "anno_1" / "bear" / f"{frame}.png")), frame_ids)
    result = json.loads(out.splitlines()[-1])
    assert sorted(result["per_annotator"]) == [f"anno_{a}" for a in range(4)]
    for key in ("J", "F", "JF"):
        assert result[key] == pytest.approx(np.mean([r[key] for r in result["per_annotator"].values()]))


def write_results(folder: Path, labels_of) -> Path:
    """Result PNGs ``folder/<video>/<frame>.png`` with ids ``labels_of(num_objects, frame_index)``."""
    for video, num_objects in VIDEOS.items():
        (folder / video).mkdir(parents=True)
        for index, frame in enumerate(FRAMES):
            (folder / video / f"{frame}.png").write_bytes(palette_png_bytes(labels_of(num_objects, index)))
    return folder


def test_eval_only_on_hand_made_results(davis, tmp_path):
    _, davis_root = davis
    perfect = write_results(tmp_path / "perfect", object_labels)
    code, out = run(["--eval_only", "--davis_root", str(davis_root), "--results_dir", str(perfect)])
    result = json.loads(out.splitlines()[-1])
    assert code == 0 and set(result) == {"J", "F", "JF", "per_object"}
    assert result["J"] == result["F"] == result["JF"] == 1.0
    assert sorted(result["per_object"]) == ["bear_1", "bear_2", "cows_1"]

    # anno_0 perfect, anno_1..3 empty: every object is visible in every frame, so empty results score 0.
    shutil.copytree(perfect, tmp_path / "all" / "anno_0")
    for annotator in (1, 2, 3):
        write_results(tmp_path / "all" / f"anno_{annotator}", lambda n, i: np.zeros((HEIGHT, WIDTH), np.uint8))
    code, out = run(["--eval_only", "--davis_root", str(davis_root), "--results_dir", str(tmp_path / "all")])
    result = json.loads(out.splitlines()[-1])
    assert code == 0 and result["J"] == result["F"] == result["JF"] == pytest.approx(0.25)
    assert result["per_annotator"]["anno_0"]["JF"] == 1.0 and result["per_annotator"]["anno_2"]["JF"] == 0.0

    shutil.rmtree(tmp_path / "all" / "anno_3")
    with pytest.raises(FileNotFoundError, match="anno_3"):
        run(["--eval_only", "--davis_root", str(davis_root), "--results_dir", str(tmp_path / "all")])


def test_every_flag_has_help(capsys):
    assert_help_explains_every_flag(inference_davis.build_parser(), capsys)


def test_evaluate_py_protocol_davis_prints_what_eval_only_prints(davis, tmp_path):
    from tests.scripts import scorer_output

    _, davis_root = davis
    for annotator in range(4):  # the annotators' bands are shifted by 0..3 pixels: four different scores
        write_results(tmp_path / f"anno_{annotator}",
                      lambda n, i, a=annotator: np.roll(object_labels(n, i), a, axis=1))
    for results_dir in (tmp_path, tmp_path / "anno_2"):
        code, out = run(["--eval_only", "--davis_root", str(davis_root), "--results_dir", str(results_dir)])
        assert code == 0
        assert scorer_output(["--protocol", "davis", "--pred_dir", str(results_dir), "--gt_root",
                              str(davis_root)]) == out
