"""A fuzz set of malformed datasets and checkpoints: each gives one error naming the file / video / frame and what
was expected, and leaves no half-written output; valid but unusual input (non-ASCII or very long sentences,
one-frame videos, rarely visible objects, odd frame sizes) gives correct-shaped results."""
import contextlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import inference_ytvos
import main
from datasets import build_dataset
from datasets.errors import DatasetFormatError
from inference.predictor import Predictor
from models import build_model
from models.pretrained import load_pretrained
from tests import train_standins
from util.checkpoint import CheckpointError, build_checkpoint, save_checkpoint, trainable_state_dict
from util.cli import exit_on_user_error
from util.config import load_config

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "refshapes_tiny.yaml"
KEEP_VIDEOS, KEEP_EXPRESSIONS = 2, 2


def meta_path(root: Path, split: str) -> Path:
    return root / "meta_expressions" / split / "meta_expressions.json"


def read_meta(root: Path, split: str) -> dict:
    return json.loads(meta_path(root, split).read_text())["videos"]


def write_meta(root: Path, split: str, videos: dict) -> None:
    meta_path(root, split).parent.mkdir(parents=True, exist_ok=True)
    meta_path(root, split).write_text(json.dumps({"videos": videos}, ensure_ascii=False), encoding="utf-8")


def small_copy(refshapes_root: Path, root: Path) -> Path:
    """The first KEEP_VIDEOS videos of each split with KEEP_EXPRESSIONS expressions each."""
    for split in ("train", "valid"):
        videos = dict(sorted(read_meta(refshapes_root, split).items())[:KEEP_VIDEOS])
        for video, entry in videos.items():
            entry["expressions"] = dict(sorted(entry["expressions"].items())[:KEEP_EXPRESSIONS])
            for kind in ("JPEGImages", "Annotations"):
                shutil.copytree(refshapes_root / split / kind / video, root / split / kind / video)
        write_meta(root, split, videos)
    return root


def edit_meta(root: Path, split: str, change) -> None:
    videos = read_meta(root, split)
    change(videos)
    write_meta(root, split, videos)


def first(root: Path, split: str) -> tuple[str, str]:
    """The first video of a split and its first frame."""
    video, entry = sorted(read_meta(root, split).items())[0]
    return video, entry["frames"][0]


def frame_path(root: Path, split: str, kind: str = "JPEGImages") -> Path:
    video, frame = first(root, split)
    return root / split / kind / video / f"{frame}.{'jpg' if kind == 'JPEGImages' else 'png'}"


# Each corruption: (change the dataset copy in split, error type, text the message must hold ({video}, {frame},
# {path} filled in)). They apply to any split; the inference ones run on "valid", the training ones on "train".
def missing_frame(root, split):
    frame_path(root, split).unlink()


def truncated_jpeg(root, split):
    path = frame_path(root, split)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_jpeg(root, split):
    frame_path(root, split).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)


def broken_json(root, split):
    meta_path(root, split).write_text('{"videos": {"v": {"frames": ["0000')


def json_video_without_folder(root, split):
    edit_meta(root, split, lambda videos: videos.update(ghost={"expressions": {"0": {"exp": "a cat", "obj_id": "1"}},
                                                               "frames": ["00000"]}))


def missing_video_folder(root, split):
    shutil.rmtree(root / split / "JPEGImages" / first(root, split)[0])


def frame_listed_not_on_disk(root, split):
    edit_meta(root, split, lambda videos: videos[first(root, split)[0]]["frames"].append("99999"))


def empty_sentence(root, split):
    edit_meta(root, split, lambda videos: videos[first(root, split)[0]]["expressions"]["0"].update(exp="   "))


def frames_not_a_list(root, split):
    edit_meta(root, split, lambda videos: videos[first(root, split)[0]].update(frames="00000"))


CORRUPTIONS = {
    "missing_frame": (missing_frame, FileNotFoundError, ["{video}", "{frame}", "missing"]),
    "truncated_jpeg": (truncated_jpeg, DatasetFormatError, ["{video}", "{frame}", "{path}", "truncated or corrupt"]),
    "corrupt_jpeg": (corrupt_jpeg, DatasetFormatError, ["{video}", "{frame}", "{path}"]),
    "broken_json": (broken_json, DatasetFormatError, ["{meta}", "not valid json"]),
    "json_video_without_folder": (json_video_without_folder, FileNotFoundError, ["'ghost'", "{meta}", "missing"]),
    "missing_video_folder": (missing_video_folder, FileNotFoundError, ["{video}", "{meta}", "folder", "missing"]),
    "frame_listed_not_on_disk": (frame_listed_not_on_disk, FileNotFoundError, ["'99999'", "{video}", "{meta}"]),
    "empty_sentence": (empty_sentence, DatasetFormatError, ["{video}", "expression '0'", "empty", "{meta}"]),
    "frames_not_a_list": (frames_not_a_list, DatasetFormatError, ["{video}", "'frames' list", "{meta}"]),
}


def expected_texts(texts: list[str], root: Path, split: str) -> list[str]:
    video, frame = first(root, split)
    fill = {"video": repr(video), "frame": repr(frame), "path": str(frame_path(root, split)),
            "meta": str(meta_path(root, split))}
    return [text.format(**fill) for text in texts]


@pytest.fixture(scope="module")
def predictor(tiny_weights, refshapes_root) -> Predictor:
    cfg = load_config(CONFIG)
    cfg.update(weights=str(tiny_weights), data_root=str(refshapes_root))
    cfg["data"]["test_size"] = cfg["data"]["max_size"] = 32
    torch.manual_seed(0)
    model, _ = build_model(cfg, load_pretrained(tiny_weights))
    return Predictor(model, cfg)


def run_inference(predictor, root: Path, output_dir: Path, monkeypatch) -> int:
    # The loading of a predictor is tested below and in test_inference_ytvos; here the data path is under test.
    monkeypatch.setattr(inference_ytvos, "load_predictor", lambda args: predictor)
    with contextlib.redirect_stderr(io.StringIO()):
        return inference_ytvos.main(["--checkpoint", "unused", "--data_root", str(root), "--output_dir",
                                     str(output_dir)])


def assert_nothing_half_written(output_dir: Path, failed_video: str | None) -> None:
    assert not (output_dir / "submission.zip").exists()
    if not output_dir.exists():
        return
    assert not [path for path in output_dir.rglob(".*")]  # no staging folder or temp file
    if failed_video is not None:
        assert not (output_dir / "Annotations" / failed_video).exists()


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_inference_on_a_malformed_split_fails_with_one_clear_error(predictor, refshapes_root, tmp_path, monkeypatch,
                                                                   case):
    root = small_copy(refshapes_root, tmp_path / "data")
    corrupt, error_type, texts = CORRUPTIONS[case]
    texts = expected_texts(texts, root, "valid")
    corrupt(root, "valid")
    with pytest.raises(error_type) as error:
        run_inference(predictor, root, tmp_path / "out", monkeypatch)
    for text in texts:
        assert text in str(error.value), (case, str(error.value))
    assert_nothing_half_written(tmp_path / "out", first(refshapes_root, "valid")[0] if case != "broken_json" else None)


TRAIN_ONLY = {
    "palette_ids_do_not_match_obj_id": (
        lambda root, split: edit_meta(root, split, lambda videos: [e.update(obj_id="77") for e in
                                                                   videos[first(root, split)[0]]["expressions"].values()]),
        DatasetFormatError, ["{video}", "object id 77", "{meta}", "palette"]),
    "missing_annotation": (lambda root, split: frame_path(root, split, "Annotations").unlink(), FileNotFoundError,
                           ["{video}", "{frame}", "missing"]),
    "annotation_not_palette": (
        lambda root, split: Image.new("RGB", Image.open(frame_path(root, split)).size).save(
            frame_path(root, split, "Annotations")), DatasetFormatError, ["{video}", "{frame}", "palette"]),
    "annotation_wrong_size": (
        lambda root, split: Image.new("P", (5, 7)).save(frame_path(root, split, "Annotations")), DatasetFormatError,
        ["{video}", "{frame}", "5x7", "but the frame is"]),
    "frames_of_different_sizes": (
        lambda root, split: Image.new("RGB", (13, 11)).save(frame_path(root, split)), DatasetFormatError,
        ["{video}", "13x11", "one size"]),
}


def train_cfg(root: Path) -> dict:
    cfg = load_config(CONFIG)
    cfg["data_root"] = str(root)
    cfg["data"].update(train_scales=[32], max_size=48, test_size=32)
    return cfg


@pytest.mark.parametrize("case", sorted(CORRUPTIONS) + sorted(TRAIN_ONLY))
def test_training_data_that_is_malformed_fails_naming_the_file(refshapes_root, tmp_path, case):
    root = small_copy(refshapes_root, tmp_path / "data")
    corrupt, error_type, texts = {**CORRUPTIONS, **TRAIN_ONLY}[case]
    texts = expected_texts(texts, root, "train")
    corrupt(root, "train")
    with pytest.raises(error_type) as error:
        dataset = build_dataset("refshapes", "train", train_cfg(root))
        for index in range(len(dataset)):  # the first video's items come first
            dataset[index]
    for text in texts:
        assert text in str(error.value), (case, str(error.value))


def test_main_fails_on_malformed_data_before_writing_anything(refshapes_root, tmp_path, monkeypatch):
    root = small_copy(refshapes_root, tmp_path / "data")
    broken_json(root, "train")
    monkeypatch.setattr(main, "build_model", train_standins.build_model)
    cfg = train_cfg(root)
    cfg["output_dir"] = str(tmp_path / "out")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(DatasetFormatError, match="not valid json"):
        main.main(["--config", str(tmp_path / "c.yaml"), "--device", "cpu"])
    assert not (tmp_path / "out").exists()


def test_entry_points_print_one_error_line_and_exit_1(capsys):
    def failing() -> int:
        raise DatasetFormatError("data/x.json is not valid json; re-download it")

    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(failing)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: data/x.json is not valid json; re-download it\n"
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(lambda: 143)
    assert exit_info.value.code == 143
    with pytest.raises(KeyError):  # a bug keeps its traceback
        exit_on_user_error(lambda: {}["x"])

    def internal_bug() -> int:
        raise ValueError("shapes [2, 3] and [3, 2] differ")  # a ValueError that is not about the user's input

    with pytest.raises(ValueError, match="shapes"):
        exit_on_user_error(internal_bug)


# --- checkpoints that do not fit the model ----------------------------------------------------------------------

def mismatched_state(model) -> dict:
    state = trainable_state_dict(model)
    missing = sorted(state)[0]
    del state[missing]
    misshaped = sorted(state)[0]
    state[misshaped] = torch.zeros(3, 3)
    state["surprise.weight"] = torch.zeros(1)
    return state, missing, misshaped


def test_predictor_and_resume_list_missing_unexpected_and_misshaped_keys(predictor, tiny_weights, tmp_path,
                                                                         monkeypatch):
    state, missing, misshaped = mismatched_state(predictor.model)
    checkpoint = {"model": state, "optimizer": {}, "scheduler": {}, "scaler": None, "epoch": 0, "step": 1,
                  "data_position": 0, "rng": [], "config": predictor.cfg}
    save_checkpoint(checkpoint, tmp_path, "bad.pth")
    with pytest.raises(CheckpointError) as error:
        Predictor.from_checkpoint(tmp_path / "bad.pth", tiny_weights)
    message = str(error.value)
    assert f"missing from the checkpoint (1):\n    {missing}" in message
    assert "unexpected (not trainable in this model) (1):\n    surprise.weight" in message
    assert f"{misshaped}: checkpoint (3, 3), model" in message

    # main.py --resume on the stand-ins: the same report, before any training.
    model = train_standins.TinyModel(0.5)
    state, missing, misshaped = mismatched_state(model)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [1])
    cfg = train_standins.tiny_config(seed=1, epochs=1, weight_decay=0.0, clip_max_norm=0.0, lr_drop=[1],
                                     checkpoint_every=1)
    cfg["output_dir"] = str(tmp_path / "run")
    checkpoint = build_checkpoint(model, optimizer, scheduler, None, epoch=0, step=0, data_position=0, rng=[],
                                  config=cfg)
    checkpoint["model"] = state
    save_checkpoint(checkpoint, tmp_path, "bad_run.pth")
    monkeypatch.setattr(main, "build_model", train_standins.build_model)
    monkeypatch.setattr(main, "build_dataset", train_standins.build_dataset)
    with pytest.raises(CheckpointError) as error:
        main.main(["--resume", str(tmp_path / "bad_run.pth")])
    for text in (missing, misshaped, "surprise.weight"):
        assert text in str(error.value)
    assert not (tmp_path / "run").exists()


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran while loading",))

    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="weights_only|Unsupported global|WeightsUnpickler"):
        Predictor.from_checkpoint(tmp_path / "evil.pth", "unused")


# --- valid but unusual input -------------------------------------------------------------------------------------

def add_video(root: Path, split: str, video: str, ids: list[np.ndarray], expressions: dict) -> None:
    """A video whose frames are ``ids`` (palette annotations, object id = pixel value) drawn in colour."""
    names = [f"{5 * index:05d}" for index in range(len(ids))]
    palette = [0, 0, 0, 250, 40, 40, 40, 250, 40] + [0] * (768 - 9)
    for name, frame_ids in zip(names, ids):
        for kind, image in (("JPEGImages", Image.fromarray(np.take([[0, 0, 0], [250, 40, 40], [40, 250, 40]],
                                                                   frame_ids, axis=0).astype(np.uint8))),
                            ("Annotations", Image.fromarray(frame_ids.astype(np.uint8), mode="P"))):
            (root / split / kind / video).mkdir(parents=True, exist_ok=True)
            if kind == "Annotations":
                image.putpalette(palette)
            image.save(root / split / kind / video / f"{name}.{'jpg' if kind == 'JPEGImages' else 'png'}")
    edit_meta(root, split, lambda videos: videos.update({video: {"expressions": expressions, "frames": names}}))


def blob(height: int, width: int, obj_id: int, present: bool) -> np.ndarray:
    ids = np.zeros((height, width), np.uint8)
    if present:
        ids[height // 4: height // 2, width // 3: width // 2] = obj_id
    return ids


LONG_SENTENCE = " ".join(["the red square that slowly drifts towards the upper left corner"] * 12)
UNUSUAL_EXPRESSIONS = {"0": {"exp": "die rote Kugel über dem Würfel — 赤い球 🚀", "obj_id": "1"},
                       "1": {"exp": LONG_SENTENCE, "obj_id": "1"}}


def test_unusual_but_valid_videos_and_sentences_give_complete_outputs(predictor, refshapes_root, tmp_path,
                                                                      monkeypatch):
    root = small_copy(refshapes_root, tmp_path / "data")
    write_meta(root, "valid", {})  # only the unusual videos, to keep the test fast
    add_video(root, "valid", "odd_one_frame", [blob(45, 67, 1, True)], UNUSUAL_EXPRESSIONS)
    add_video(root, "valid", "rare_object", [blob(45, 67, 1, index == 3) for index in range(5)],
              {"0": {"exp": "the red square", "obj_id": "1"}})
    output_dir = tmp_path / "out"
    with pytest.warns(UserWarning, match="only the first 32"):
        assert run_inference(predictor, root, output_dir, monkeypatch) == 0
    for video, frames in (("odd_one_frame", 1), ("rare_object", 5)):
        pngs = sorted((output_dir / "Annotations" / video).rglob("*.png"))
        assert len(pngs) == frames * len(read_meta(root, "valid")[video]["expressions"])
        for png in pngs:
            with Image.open(png) as image:
                assert image.size == (67, 45) and image.mode == "L"
                assert set(np.unique(np.asarray(image)).tolist()) <= {0, 255}
    with zipfile.ZipFile(output_dir / "submission.zip") as archive:
        names = archive.namelist()
    assert "Annotations/odd_one_frame/1/00000.png" in names
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        assert inference_ytvos.main(["--check_zip", str(output_dir / "submission.zip"), "--data_root", str(root)]) == 0
    assert "complete" in out.getvalue()


def test_unusual_but_valid_training_videos_give_clips_of_the_configured_shape(refshapes_root, tmp_path):
    root = small_copy(refshapes_root, tmp_path / "data")
    add_video(root, "train", "odd_one_frame", [blob(45, 67, 1, True)], UNUSUAL_EXPRESSIONS)
    add_video(root, "train", "rare_object", [blob(45, 67, 2, index == 6) for index in range(8)],
              {"0": {"exp": "the rarely seen square", "obj_id": "2"}})
    cfg = train_cfg(root)
    dataset = build_dataset("refshapes", "train", cfg)
    num_frames = cfg["data"]["num_frames"]
    seen = set()
    for index, (video, _, _) in enumerate(dataset.items):
        if video not in ("odd_one_frame", "rare_object"):
            continue
        frames, target = dataset[index]
        seen.add(video)
        assert frames.shape[:2] == (num_frames, 3)
        assert frames.shape[-2:] == target["masks"].shape[-2:] == tuple(target["size"].tolist())
        assert min(frames.shape[-2:]) == 32  # the short side at the train scale
        assert target["valid"].sum() >= 1  # re-anchored on the frame that shows the object
        present = target["valid"].bool()
        assert ((target["boxes"][present] > 0) & (target["boxes"][present] <= 1)).all()
        if video == "odd_one_frame":
            assert target["frames"] == ["00000"] * num_frames
    assert seen == {"odd_one_frame", "rare_object"}
