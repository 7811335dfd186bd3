"""A2D/JHMDB metrics on three hand-built samples, and the RLE round trip they rely on."""
import json

import numpy as np
import pytest

from metrics.a2d import a2d_metrics, build_coco_ground_truth
from util.mask_rle import mask_to_rle, rle_to_mask


def box(y0: int, x0: int, h: int, w: int, shape=(12, 12)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y0 + h, x0:x0 + w] = True
    return mask


# Each ground truth is a 4x4 box (16 px).
GT = {"a": box(1, 1, 4, 4), "b": box(6, 6, 4, 4), "c": box(2, 6, 4, 4)}


def prediction(image_id: str, mask: np.ndarray, score: float) -> dict:
    return {"image_id": image_id, "segmentation": mask_to_rle(mask), "score": score}


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    for shape in ((7, 5), (1, 9), (16, 3)):
        mask = rng.random(shape) > 0.5
        rle = json.loads(json.dumps(mask_to_rle(mask)))  # JSON-ready: counts is a str
        assert isinstance(rle["counts"], str) and rle["size"] == list(shape)
        np.testing.assert_array_equal(rle_to_mask(rle), mask)
    assert not rle_to_mask(mask_to_rle(np.zeros((3, 4), bool))).any()


def test_ground_truth_dict():
    gt = build_coco_ground_truth(GT.items())
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3]
    assert gt["categories"] == [{"id": 1, "name": "object"}]
    assert gt["annotations"][0]["area"] == 16.0 and gt["annotations"][0]["bbox"] == [1.0, 1.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="unique"):
        build_coco_ground_truth([("a", GT["a"]), ("a", GT["b"])])


def test_top_prediction_iou_and_precision_by_hand():
    preds = [
        prediction("a", GT["a"], 0.9),  # exact: IoU 1
        prediction("a", box(8, 0, 2, 2), 0.1),  # low-scoring query: used for mAP only
        prediction("b", box(6, 6, 2, 4), 0.8),  # half of the box: I = 8, U = 16 -> IoU 0.5 (not > 0.5)
        prediction("c", box(8, 0, 4, 4), 0.7),  # disjoint: I = 0, U = 32
    ]
    out = a2d_metrics(preds, build_coco_ground_truth(GT.items()))
    assert out["overall_iou"] == pytest.approx((16 + 8 + 0) / (16 + 16 + 32))
    assert out["mean_iou"] == pytest.approx((1 + 0.5 + 1e-6 / 32) / 3, abs=1e-7)
    # (8 + 1e-6) / (16 + 1e-6) is exactly 0.5 in float32 (MTTR's arithmetic), so sample b fails P@0.5.
    for k in (0.5, 0.6, 0.7, 0.8, 0.9):
        assert out[f"P@{k}"] == pytest.approx(1 / 3)


def test_map_is_one_for_perfect_predictions():
    preds = [prediction(image_id, mask, 0.5) for image_id, mask in GT.items()]
    gt = build_coco_ground_truth(GT.items())
    out = a2d_metrics(preds, gt)
    assert gt == build_coco_ground_truth(GT.items())  # the caller's ground truth is left untouched
    assert out["mAP"] == pytest.approx(1.0) and out["AP50"] == pytest.approx(1.0)
    assert out["AP75"] == pytest.approx(1.0)
    assert out["overall_iou"] == 1.0 and out["mean_iou"] == 1.0 and out["P@0.9"] == 1.0


def test_map_drops_with_a_confident_wrong_prediction():
    # Ranked: the wrong one (FP) then three TPs -> precision 1/2, 2/3, 3/4 at recall 1/3, 2/3, 1; interpolated
    # precision is 3/4 at every recall level and IoU threshold, so AP = 0.75.
    preds = [prediction(image_id, mask, 0.5) for image_id, mask in GT.items()]
    preds.append(prediction("a", box(8, 0, 4, 4), 0.9))
    out = a2d_metrics(preds, build_coco_ground_truth(GT.items()))
    assert out["mAP"] == pytest.approx(0.75) and out["AP50"] == pytest.approx(0.75)
    assert out["P@0.5"] == pytest.approx(2 / 3)  # the wrong prediction is now sample a's top-1


def test_equal_scores_pick_the_later_prediction():
    preds = [prediction("a", box(8, 0, 4, 4), 0.5), prediction("a", GT["a"], 0.5)]
    out = a2d_metrics(preds, build_coco_ground_truth([("a", GT["a"])]))
    assert out["mean_iou"] == 1.0


def test_prediction_errors_name_the_image():
    gt = build_coco_ground_truth(GT.items())
    with pytest.raises(ValueError, match="no prediction for image_id 'c'"):
        a2d_metrics([prediction("a", GT["a"], 1.0), prediction("b", GT["b"], 1.0)], gt)
    with pytest.raises(ValueError, match="not in the ground truth"):
        a2d_metrics([prediction("zzz", GT["a"], 1.0)], gt)
