"""inference_mevis.py and main.py on RefShapes in the MeViS layout: the valid_u tree, the valid zip with the video
folders at its root, --score against the official algorithm, a short training run scored by --eval and by
inference_mevis.py alike, nothing half-written on a broken frame, and the command line."""
import contextlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference_mevis
import main
from datasets import load_frames
from datasets.refshapes import generate_refshapes
from datasets.ytvos import first_frame_sizes
from models import build_model
from inference.predictor import Predictor
from models.pretrained import load_pretrained
from testing.mevis_reference_loop import evaluate_mevis_loop
from testing.mevis_tree import write_predictions
from tests.cli_help import assert_help_explains_every_flag
from util.config import load_config
from util.mask_rle import rle_to_mask
from inference.writers import check_zip, expected_masks

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "refshapes_mevis_tiny.yaml"
SIZE = 32  # inference at 32 px, masks upsampled to the 64 px frames


def run(argv: list[str]) -> tuple[int, str, str]:
    """``inference_mevis.main(argv)`` -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = inference_mevis.main(argv)
    return code, out.getvalue(), err.getvalue()


def read_meta(root: Path, split: str) -> dict:
    return json.loads((root / split / "meta_expressions.json").read_text())["videos"]


def tree_names(videos: dict) -> set[str]:
    return {f"{video}/{exp_id}/{frame}.png"
            for video, entry in videos.items() for exp_id in entry["expressions"] for frame in entry["frames"]}


@pytest.fixture(scope="module")
def mevis_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refshapes_mevis")
    generate_refshapes(root, num_videos=4, num_valid_videos=2, num_frames=6, size=64, seed=0, layout="mevis")
    return root


@pytest.fixture(scope="module")
def model_dir(tiny_weights, mevis_root, tmp_path_factory) -> Path:
    cfg = load_config(CONFIG)
    cfg.update(weights=str(tiny_weights), data_root=str(mevis_root))
    cfg["data"]["test_size"] = cfg["data"]["max_size"] = SIZE
    torch.manual_seed(0)
    model, _ = build_model(cfg, load_pretrained(tiny_weights))
    return Predictor(model, cfg).save_pretrained(tmp_path_factory.mktemp("model") / "hcd")


@pytest.fixture(scope="module")
def valid_u_run(model_dir, tmp_path_factory) -> tuple[Path, str]:
    output_dir = tmp_path_factory.mktemp("valid_u")
    code, _, err = run(["--checkpoint", str(model_dir), "--split", "valid_u", "--output_dir", str(output_dir)])
    assert code == 0
    return output_dir, err


def score(pred_dir: Path, gt_root: Path) -> dict:
    code, out, _ = run(["--score", "--pred_dir", str(pred_dir), "--gt_root", str(gt_root), "--split", "valid_u"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("MeViS unknown valid_u: ") and lines[1].split()[:2] == ["kind", "count"]
    return json.loads(lines[-1])


def test_valid_u_tree_matches_the_predictor_and_scores_as_the_official_loop(valid_u_run, mevis_root, model_dir,
                                                                             tiny_weights):
    output_dir, err = valid_u_run
    videos = read_meta(mevis_root, "valid_u")
    count = sum(len(entry["expressions"]) for entry in videos.values())
    assert f"not a MeViS v1/v2 release count valid_u: 2 videos, {count} expressions" in err
    written = {str(path.relative_to(output_dir)) for path in output_dir.rglob("*.png")}
    assert written == tree_names(videos) and not (output_dir / "submission.zip").exists()
    predictor = Predictor.from_pretrained(model_dir, tiny_weights)
    for video, entry in videos.items():
        frames = load_frames(mevis_root, "valid_u", video, entry["frames"])
        exp_ids = list(entry["expressions"])
        masks = predictor.segment(frames, [entry["expressions"][e]["exp"] for e in exp_ids], clip_len=36)
        for exp_id, exp_masks in zip(exp_ids, masks):
            for frame, image, mask in zip(entry["frames"], frames, exp_masks):
                with Image.open(output_dir / video / exp_id / f"{frame}.png") as png:
                    assert png.mode == "L" and png.size == image.size
                    np.testing.assert_array_equal(np.asarray(png), mask.astype(np.uint8) * 255)
    # Some pixels are foreground and some background: the comparisons are not vacuous.
    assert 0 < np.mean([np.asarray(Image.open(path)).mean() for path in output_dir.rglob("*.png")]) < 255

    scores = score(output_dir, mevis_root)
    assert list(scores) == ["J", "F", "JF", "expressions", "version", "per_expression"]
    assert scores["expressions"] == count and scores["version"] == "unknown"
    reference = evaluate_mevis_loop(mevis_root / "valid_u" / "meta_expressions.json",
                                    mevis_root / "valid_u" / "mask_dict.json", output_dir)
    for key in ("J", "F", "JF"):
        assert scores[key] == pytest.approx(reference[key], abs=1e-9)
    for name, (j, f) in reference["per_expression"].items():
        assert scores["per_expression"][name] == pytest.approx({"J": j, "F": f}, abs=1e-9)


def test_the_ground_truth_scores_one_and_multi_object_targets_count(mevis_root, tmp_path):
    videos = read_meta(mevis_root, "valid_u")
    mask_dict = json.loads((mevis_root / "valid_u" / "mask_dict.json").read_text())
    multi = 0
    for video, entry in videos.items():
        for exp_id, expression in entry["expressions"].items():
            masks = np.zeros((len(entry["frames"]), 64, 64), bool)
            for anno_id in expression["anno_id"]:
                for t, rle in enumerate(mask_dict[str(anno_id)]):
                    masks[t] |= rle_to_mask(rle) if rle is not None else False
            write_predictions(tmp_path / "gt", video, exp_id, masks, entry["frames"])
            multi += len(expression["anno_id"]) > 1
    assert multi > 0
    scores = score(tmp_path / "gt", mevis_root)
    assert scores["J"] == scores["F"] == scores["JF"] == 1.0


def test_valid_writes_a_complete_zip_with_the_video_folders_at_its_root(valid_u_run, model_dir, mevis_root,
                                                                        tmp_path):
    code, out, _ = run(["--checkpoint", str(model_dir), "--split", "valid", "--output_dir", str(tmp_path)])
    assert code == 0 and "video folders at the zip root" in out
    videos = read_meta(mevis_root, "valid")
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        names = {info.filename for info in archive.infolist() if not info.is_dir()}
        assert names == tree_names(videos) and not any(name.startswith("Annotations") for name in names)
        # valid holds the valid_u videos and sentences: the same masks
        for name in names:
            assert archive.read(name) == (valid_u_run[0] / name).read_bytes()
    expected = expected_masks(videos, first_frame_sizes(mevis_root, "valid", videos), top="")
    assert check_zip(tmp_path / "submission.zip", expected) == []


def test_a_broken_frame_leaves_complete_videos_and_no_zip(model_dir, mevis_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mevis_root / "valid", root / "valid")
    first, second = sorted(read_meta(root, "valid"))
    (root / "valid" / "JPEGImages" / second / "00010.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=rf"video '{second}', frame '00010'"):
        run(["--checkpoint", str(model_dir), "--data_root", str(root), "--split", "valid",
             "--output_dir", str(tmp_path / "out")])
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert written == ["config.yaml", first]  # no half-written folder, no zip
    assert {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out" / first).rglob("*.png")} == \
           {name for name in tree_names(read_meta(root, "valid")) if name.startswith(first)}


def test_short_training_then_eval_and_inference_agree(mevis_root, tiny_weights, tmp_path, capsys):
    out = tmp_path / "run"
    small = ["--set", "data.train_scales=[64]", "--set", "data.max_size=64", "--set", "data.test_size=32"]
    assert main.main(["--config", str(CONFIG), "--data_root", str(mevis_root), "--weights", str(tiny_weights),
                      "--output_dir", str(out), "--max_steps", "2", *small]) == 0
    assert (out / "last.pth").is_file() and load_config(out / "config.yaml")["dataset"] == "mevis"
    assert main.main(["--eval", "--resume", str(out / "last.pth")]) == 0
    evaluated = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert json.loads((out / "eval_mevis.json").read_text()) == evaluated
    assert evaluated["version"] == "unknown" and evaluated["expressions"] > 0
    code, _, _ = run(["--checkpoint", str(out / "last.pth"), "--split", "valid_u",
                      "--output_dir", str(tmp_path / "pred")])
    assert code == 0
    scored = score(tmp_path / "pred", mevis_root)
    for key in ("J", "F", "JF", "expressions"):
        assert scored[key] == pytest.approx(evaluated[key], abs=1e-12), key


@pytest.mark.parametrize("argv, message", [
    (["--score", "--pred_dir", "p"], "--score needs --pred_dir and --gt_root"),
    (["--score", "--pred_dir", "p", "--gt_root", "g", "--split", "valid"], "--split valid_u"),
    (["--split", "valid_u"], "inference needs --checkpoint and --output_dir"),
    (["--checkpoint", "c", "--output_dir", "o", "--clip_len", "0"], "--clip_len must be >= 1"),
    (["--split", "test"], "invalid choice: 'test'"),
])
def test_command_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        inference_mevis.main(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_every_flag_has_help(capsys):
    assert_help_explains_every_flag(inference_mevis.build_parser(), capsys)


def test_evaluate_py_protocol_mevis_prints_what_score_prints(valid_u_run, mevis_root):
    from tests.scripts import scorer_output

    pred_dir = valid_u_run[0]
    code, out, _ = run(["--score", "--pred_dir", str(pred_dir), "--gt_root", str(mevis_root), "--split", "valid_u"])
    assert code == 0
    assert scorer_output(["--protocol", "mevis", "--pred_dir", str(pred_dir), "--gt_root", str(mevis_root)]) == out
