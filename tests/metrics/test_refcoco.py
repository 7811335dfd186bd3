"""metrics.refcoco: oIoU / mIoU / P@X against numbers computed by hand."""
import numpy as np
import pytest

from metrics.refcoco import intersection_union, refcoco_scores


def masks(height: int, width: int, *boxes) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for top, left, bottom, right in boxes:
        mask[top:bottom, left:right] = True
    return mask


def test_hand_computed_scores():
    # sample 1: a 2x2 prediction inside a 2x3 object: I 4, U 6 (IoU 2/3)
    first = intersection_union(masks(4, 4, (0, 0, 2, 2)), masks(4, 4, (0, 0, 2, 3)))
    # sample 2: a 1x2 prediction and a 1x2 object shifted by one pixel: I 1, U 3 (IoU 1/3)
    second = intersection_union(masks(3, 5, (1, 0, 2, 2)), masks(3, 5, (1, 1, 2, 3)))
    # sample 3: a 2x5 prediction beside a 2-pixel object: I 0, U 10 + 2 (IoU 0)
    third = intersection_union(masks(6, 6, (0, 0, 2, 5)), masks(6, 6, (5, 5, 6, 6), (4, 5, 5, 6)))
    assert (first, second, third) == ((4, 6), (1, 3), (0, 12))
    scores = refcoco_scores([first, second, third])
    assert scores["oIoU"] == pytest.approx(5 / 21)  # (4 + 1 + 0) / (6 + 3 + 12)
    assert scores["mIoU"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert scores["P@0.5"] == pytest.approx(1 / 3) and scores["P@0.6"] == pytest.approx(1 / 3)
    assert scores["P@0.7"] == 0.0 and scores["samples"] == 3
    exact = refcoco_scores([(1, 2), (3, 5), (4, 5)])  # IoU exactly 0.5, 0.6 and 0.8: counted at their own X
    assert (exact["P@0.5"], exact["P@0.6"], exact["P@0.7"], exact["P@0.8"], exact["P@0.9"]) == \
        pytest.approx((1.0, 2 / 3, 1 / 3, 1 / 3, 0.0))


def test_o_iou_weighs_large_objects_and_empty_pairs_count_one():
    scores = refcoco_scores([(90, 100), (0, 10), (0, 0)])
    assert scores["oIoU"] == pytest.approx(90 / 110)
    assert scores["mIoU"] == pytest.approx((0.9 + 0.0 + 1.0) / 3)


def test_bad_input():
    with pytest.raises(ValueError, match="no samples"):
        refcoco_scores([])
    with pytest.raises(ValueError, match="intersection"):
        refcoco_scores([(5, 4)])
    with pytest.raises(ValueError, match="differ in size"):
        intersection_union(np.zeros((2, 2), bool), np.zeros((2, 3), bool))
