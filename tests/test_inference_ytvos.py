"""inference_ytvos.py end to end on RefShapes valid: the PNG tree, the zip, --check_zip, --score, the test-json
filter and the resume / clip / threshold flags."""
import contextlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import inference_ytvos
from datasets import load_frames
from inference.predictor import Predictor
from inference.writers import mask_png_bytes
from tests.cli_help import assert_help_explains_every_flag
from util.config import load_config, save_config



def run(argv: list[str]) -> tuple[int, str, str]:
    """``inference_ytvos.main(argv)`` -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = inference_ytvos.main(argv)
    return code, out.getvalue(), err.getvalue()


def read_meta(root: Path, split: str = "valid") -> dict:
    return json.loads((root / "meta_expressions" / split / "meta_expressions.json").read_text())["videos"]


@pytest.fixture(scope="module")
def predictor(tiny_model_dir, tiny_weights) -> Predictor:
    return Predictor.from_pretrained(tiny_model_dir, tiny_weights)


@pytest.fixture(scope="module")
def inference_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, str]:
    """One inference run on RefShapes valid (data_root and weights from the stored config): (output dir, stderr)."""
    output_dir = tmp_path_factory.mktemp("ytvos_out")
    code, _, err = run(["--checkpoint", str(tiny_model_dir), "--output_dir", str(output_dir)])
    assert code == 0
    return output_dir, err


def expected_names(meta: dict) -> set[str]:
    return {f"Annotations/{video}/{exp_id}/{frame}.png"
            for video, entry in meta.items() for exp_id in entry["expressions"] for frame in entry["frames"]}


def test_tree_and_zip_are_complete_and_match_the_predictor(inference_run, refshapes_root, predictor):
    output_dir, err = inference_run
    meta = read_meta(refshapes_root)
    assert "meta_expressions/test/meta_expressions.json not found" in err and "507" in err
    names = expected_names(meta)
    on_disk = {str(path.relative_to(output_dir)) for path in (output_dir / "Annotations").rglob("*.png")}
    assert on_disk == names
    with zipfile.ZipFile(output_dir / "submission.zip") as archive:
        assert {info.filename for info in archive.infolist() if not info.is_dir()} == names
    assert (output_dir / "config.yaml").is_file()
    for video, entry in meta.items():
        frames = load_frames(refshapes_root, "valid", video, entry["frames"])
        exp_ids = list(entry["expressions"])
        masks = predictor.segment(frames, [entry["expressions"][e]["exp"] for e in exp_ids])
        for exp_id, exp_masks in zip(exp_ids, masks):
            for frame, image, mask in zip(entry["frames"], frames, exp_masks):
                with Image.open(output_dir / "Annotations" / video / exp_id / f"{frame}.png") as png:
                    assert png.mode == "L" and png.size == image.size
                    values = np.asarray(png)
                assert set(np.unique(values)) <= {0, 255}
                np.testing.assert_array_equal(values, mask.astype(np.uint8) * 255)
    # Some pixels are foreground and some background: the comparison above is not vacuous.
    assert 0 < np.mean([np.asarray(Image.open(p)).mean() for p in (output_dir / "Annotations").rglob("*.png")]) < 255


def rewrite_zip(source: Path, target: Path, change) -> Path:
    """Copy the zip ``source`` to ``target``, passing the {name: bytes} entries through ``change``."""
    with zipfile.ZipFile(source) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    change(entries)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return target


def png_bytes(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_check_zip_accepts_the_submission_and_finds_each_defect(inference_run, refshapes_root, tmp_path):
    output_dir, _ = inference_run
    good = output_dir / "submission.zip"
    check = ["--data_root", str(refshapes_root), "--split", "valid", "--check_zip"]
    code, out, _ = run(check + [str(good)])
    assert code == 0 and "complete" in out
    name = sorted(expected_names(read_meta(refshapes_root)))[0]
    with zipfile.ZipFile(good) as archive:
        width, height = Image.open(io.BytesIO(archive.read(name))).size
    defects = {
        "missing": (lambda entries: entries.pop(name), f"{name}: missing"),
        "size": (lambda entries: entries.update({name: mask_png_bytes(np.zeros((height, width + 1), bool))}),
                 f"{name}: size ({width + 1}, {height})"),
        "values": (lambda entries: entries.update({name: png_bytes(np.full((height, width), 7, np.uint8))}),
                   f"{name}: values [7]"),
        "extra": (lambda entries: entries.update({"Annotations/extra.png": entries[name]}),
                  "Annotations/extra.png: not part of the split"),
    }
    for label, (change, message) in defects.items():
        code, out, _ = run(check + [str(rewrite_zip(good, tmp_path / f"{label}.zip", change))])
        assert code == 1, label
        assert message in out, (label, out)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert run(check + [str(tmp_path / "junk.zip")])[0] == 1
    assert run(check + [str(tmp_path / "absent.zip")])[0] == 1


def write_tree(root: Path, gt_root: Path, mask_of) -> Path:
    """An Annotations tree whose mask of (gt ids, obj_id) is ``mask_of(ids, obj_id)``."""
    for video, entry in read_meta(gt_root).items():
        for exp_id, expression in entry["expressions"].items():
            folder = root / "Annotations" / video / exp_id
            folder.mkdir(parents=True)
            for frame in entry["frames"]:
                ids = np.asarray(Image.open(gt_root / "valid" / "Annotations" / video / f"{frame}.png"))
                (folder / f"{frame}.png").write_bytes(mask_png_bytes(mask_of(ids, int(expression["obj_id"]))))
    return root


def score(pred_dir: Path, gt_root: Path) -> dict:
    code, out, _ = run(["--score", "--pred_dir", str(pred_dir), "--gt_root", str(gt_root), "--split", "valid"])
    assert code == 0
    assert out.splitlines()[0].split()[:2] == ["kind", "count"]  # the table comes first
    return json.loads(out.splitlines()[-1])


def test_score_of_the_ground_truth_and_of_empty_masks(refshapes_root, tmp_path):
    perfect = score(write_tree(tmp_path / "gt", refshapes_root, lambda ids, obj: ids == obj), refshapes_root)
    assert set(perfect) == {"J", "F", "JF", "per_expression", "by_kind"}
    assert perfect["J"] == perfect["F"] == perfect["JF"] == 1.0
    empty = score(write_tree(tmp_path / "empty", refshapes_root, lambda ids, obj: np.zeros_like(ids, bool)),
                  refshapes_root)
    # An empty mask scores J = F = 1 on frames without the object and 0 on frames with it.
    absent = []
    for video, entry in read_meta(refshapes_root).items():
        ids = np.stack([np.asarray(Image.open(refshapes_root / "valid" / "Annotations" / video / f"{frame}.png"))
                        for frame in entry["frames"]])
        for expression in entry["expressions"].values():
            absent.append(np.mean([not (frame == int(expression["obj_id"])).any() for frame in ids]))
    assert empty["J"] == pytest.approx(np.mean(absent)) and empty["F"] == pytest.approx(np.mean(absent))
    assert len(empty["per_expression"]) == len(absent)


def test_test_json_drops_the_test_videos(refshapes_root, inference_run, tmp_path):
    root = tmp_path / "ytvos"
    (root / "meta_expressions" / "valid").mkdir(parents=True)
    shutil.copy(refshapes_root / "meta_expressions" / "valid" / "meta_expressions.json",
                root / "meta_expressions" / "valid")
    (root / "valid").symlink_to(refshapes_root / "valid")
    videos = sorted(read_meta(refshapes_root))
    test_json = root / "meta_expressions" / "test" / "meta_expressions.json"
    test_json.parent.mkdir(parents=True)
    test_json.write_text(json.dumps({"videos": {videos[0]: {"expressions": {}, "frames": []}}}))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        kept = inference_ytvos.submission_videos(root, "valid")
    assert sorted(kept) == videos[1:]
    assert f"dropped 1 test videos listed in {test_json}" in err.getvalue()
    # The full zip now holds a video that is not part of the submission.
    code, out, _ = run(["--check_zip", str(inference_run[0] / "submission.zip"), "--data_root", str(root)])
    assert code == 1 and f"Annotations/{videos[0]}/" in out and "not part of the split" in out


def test_skip_existing_clip_len_and_threshold(inference_run, tiny_model_dir, refshapes_root, predictor, tmp_path):
    first_dir, _ = inference_run
    output_dir = tmp_path / "out"
    shutil.copytree(first_dir / "Annotations", output_dir / "Annotations")
    videos = sorted(read_meta(refshapes_root))
    redo, keep = videos[0], videos[1]
    shutil.rmtree(output_dir / "Annotations" / redo)
    marker = next((output_dir / "Annotations" / keep).rglob("*.png"))
    marker.write_bytes(mask_png_bytes(np.ones(Image.open(marker).size[::-1], bool)))
    code, _, err = run(["--checkpoint", str(tiny_model_dir), "--output_dir", str(output_dir), "--skip_existing",
                        "--clip_len", "3", "--threshold", "0.6"])
    assert code == 0 and "keeping 2 video folders" in err
    assert np.asarray(Image.open(marker)).min() == 255  # kept as it was
    entry = read_meta(refshapes_root)[redo]
    exp_ids = list(entry["expressions"])
    masks = predictor.segment(load_frames(refshapes_root, "valid", redo, entry["frames"]),
                              [entry["expressions"][e]["exp"] for e in exp_ids], clip_len=3, threshold=0.6)
    for exp_id, exp_masks in zip(exp_ids, masks):
        for frame, mask in zip(entry["frames"], exp_masks):
            written = np.asarray(Image.open(output_dir / "Annotations" / redo / exp_id / f"{frame}.png"))
            np.testing.assert_array_equal(written, mask.astype(np.uint8) * 255)
    assert not [path for path in (output_dir / "Annotations").iterdir() if path.name.startswith(".")]


def test_config_flag_replaces_the_stored_config(tiny_model_dir, tmp_path):
    cfg = load_config(tiny_model_dir / "config.yaml")
    cfg["model"]["hidden_dim"] = 32
    save_config(cfg, tmp_path / "other.yaml")
    with pytest.raises(ValueError, match="shape mismatch"):
        run(["--checkpoint", str(tiny_model_dir), "--config", str(tmp_path / "other.yaml"),
             "--output_dir", str(tmp_path / "out")])


def test_every_flag_has_help(capsys):
    assert_help_explains_every_flag(inference_ytvos.build_parser(), capsys)


def test_evaluate_py_protocol_ytvos_prints_what_score_prints(refshapes_root, tmp_path):
    from tests.scripts import scorer_output

    left = np.arange(64) < 40  # the objects' left parts only: a score strictly between 0 and 1
    pred_dir = write_tree(tmp_path / "half", refshapes_root, lambda ids, obj: (ids == obj) & left)
    code, out, _ = run(["--score", "--pred_dir", str(pred_dir), "--gt_root", str(refshapes_root), "--split", "valid"])
    assert code == 0 and 0.0 < json.loads(out.splitlines()[-1])["JF"] < 1.0
    assert scorer_output(["--protocol", "ytvos", "--pred_dir", str(pred_dir), "--gt_root", str(refshapes_root)]) == out
