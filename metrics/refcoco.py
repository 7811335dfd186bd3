"""Image-level referring segmentation on RefCOCO / RefCOCO+ / RefCOCOg val: overall and mean IoU of the top query.

- **oIoU** (overall IoU): the sum over samples of the intersections divided by the sum of the unions, so large
  objects weigh more (the number LAVT, ReferFormer and VD-IT report as "oIoU" / "overall IoU");
- **mIoU**: the mean of the per-sample IoUs (a sample whose prediction and ground truth are both empty counts 1);
- **P@X**: the share of samples with IoU at least X, X in 0.5 ... 0.9 (LAVT's ``iou >= X``).

Each sample is one (image, sentence) of a val json; the prediction is the mask of the query slot with the best score
(``models.hcd.best_query``, what ``inference.predictor.Predictor`` refines), thresholded at
``inference.threshold`` at the original image size, against the sample's mask at that size. ``refcoco_scores`` is
the pure part; ``evaluate.evaluate_refcoco`` runs a model over the val sets (``main.py --eval`` on dataset
``refcoco``) and ``metrics.tables.refcoco_table`` prints them.
"""
import numpy as np

from util.errors import UserInputError

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(prediction: np.ndarray, ground_truth: np.ndarray) -> tuple[int, int]:
    """Pixel counts ``(|P ∩ G|, |P ∪ G|)`` of two bool masks ``[H, W]`` of the same size."""
    if prediction.shape != ground_truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {ground_truth.shape} differ in size")
    prediction, ground_truth = prediction.astype(bool), ground_truth.astype(bool)
    return int(np.logical_and(prediction, ground_truth).sum()), int(np.logical_or(prediction, ground_truth).sum())


def refcoco_scores(counts: list[tuple[int, int]]) -> dict:
    """``{"oIoU", "mIoU", "P@0.5", ..., "P@0.9", "samples"}`` of per-sample ``(intersection, union)`` counts."""
    if not counts:
        raise UserInputError("no samples to score")
    intersections = np.array([i for i, _ in counts], dtype=np.float64)
    unions = np.array([u for _, u in counts], dtype=np.float64)
    if (intersections > unions).any() or (intersections < 0).any():
        raise ValueError("every intersection must lie in [0, union]")
    ious = np.where(unions > 0, intersections / np.maximum(unions, 1), 1.0)
    scores = {"oIoU": float(intersections.sum() / unions.sum()) if unions.sum() else 1.0,
              "mIoU": float(ious.mean())}
    scores.update({f"P@{x}": float((ious >= x).mean()) for x in PRECISION_THRESHOLDS})
    scores["samples"] = len(counts)
    return scores
