"""Local Ref-YouTube-VOS J&F on a tiny tree written by the test."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrics.ytvos import score_predictions

FRAMES = ["00000", "00005", "00010"]
H, W = 10, 12


def save(path: Path, array: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode=mode)
    if mode == "P":  # distinct colours, or PNG saving may merge equal palette entries and renumber the ids
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (37 * i) % 256)])
    image.save(path)


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """One video with objects 1 (rows 0-1, 24 px) and 2 (rows 6-9, cols 0-5); three expressions and predictions:
    expression 0 (obj 1) exact, expression 1 (obj 2) empty, expression 2 (obj 1) covering half of it."""
    gt_root, pred_root = tmp_path / "data", tmp_path / "out"
    labels = np.zeros((H, W), np.uint8)
    labels[0:2] = 1
    labels[6:10, 0:6] = 2
    meta = {"videos": {"vid": {"frames": FRAMES, "expressions": {
        "0": {"exp": "the top bar", "obj_id": "1", "kind": "position"},
        "1": {"exp": "the bottom box", "obj_id": "2", "kind": "shape"},
        "2": {"exp": "the bar at the top", "obj_id": "1", "kind": "position"},
    }}}}
    (gt_root / "meta_expressions" / "valid").mkdir(parents=True)
    (gt_root / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps(meta))
    half = np.zeros((H, W), np.uint8)
    half[0:2, 0:6] = 255
    for frame in FRAMES:
        save(gt_root / "valid" / "Annotations" / "vid" / f"{frame}.png", labels, "P")
        save(pred_root / "Annotations" / "vid" / "0" / f"{frame}.png", (labels == 1).astype(np.uint8) * 255, "L")
        save(pred_root / "Annotations" / "vid" / "1" / f"{frame}.png", np.zeros((H, W), np.uint8), "L")
        save(pred_root / "Annotations" / "vid" / "2" / f"{frame}.png", half, "L")
    return pred_root, gt_root


def test_scores_by_hand(tree):
    pred_root, gt_root = tree
    out = score_predictions(pred_root, gt_root, "valid")
    per = out["per_expression"]
    assert per["vid/0"] == {"J": 1.0, "F": 1.0, "JF": 1.0, "kind": "position"}
    assert per["vid/1"] == {"J": 0.0, "F": 0.0, "JF": 0.0, "kind": "shape"}  # empty prediction: P = 1, R = 0
    assert per["vid/2"]["J"] == pytest.approx(12 / 24)
    assert out["J"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert out["F"] == pytest.approx((1 + 0 + per["vid/2"]["F"]) / 3)
    assert out["JF"] == pytest.approx((out["J"] + out["F"]) / 2)
    assert out["by_kind"]["shape"] == {"J": 0.0, "F": 0.0, "JF": 0.0, "count": 1}
    assert out["by_kind"]["position"]["count"] == 2
    assert out["by_kind"]["position"]["J"] == pytest.approx(0.75)


def test_half_bar_boundary_by_hand(tree):
    # GT bar rows 0-1, all 12 columns: boundary = row 1 (12 px). Half bar rows 0-1, cols 0-5: boundary =
    # (0,5), (1,0..5) (7 px). Tolerance ceil(0.008 * sqrt(10^2 + 12^2)) = 1 px: all 7 predicted pixels lie on
    # or next to row 1 -> P = 1; GT pixels (1,0..6) are within 1 px -> R = 7/12.
    pred_root, gt_root = tree
    f = score_predictions(pred_root, gt_root, "valid")["per_expression"]["vid/2"]["F"]
    assert f == pytest.approx(2 * (7 / 12) / (1 + 7 / 12))


def test_accepts_the_annotations_folder_itself(tree):
    pred_root, gt_root = tree
    assert score_predictions(pred_root / "Annotations", gt_root, "valid")["J"] == pytest.approx(0.5)


def test_missing_prediction_is_named(tree):
    pred_root, gt_root = tree
    (pred_root / "Annotations" / "vid" / "2" / "00005.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"video vid, expression 2, frame 00005"):
        score_predictions(pred_root, gt_root, "valid")


def test_split_without_ground_truth_is_an_error(tree, tmp_path):
    pred_root, gt_root = tree
    meta_path = gt_root / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    del meta["videos"]["vid"]["expressions"]["1"]["obj_id"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no 'obj_id'"):
        score_predictions(pred_root, gt_root, "valid")
