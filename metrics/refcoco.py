"""Image-level referring segmentation on RefCOCO / RefCOCO+ / RefCOCOg val: overall and mean IoU of the top query.

- **oIoU** (overall IoU): the sum over samples of the intersections divided by the sum of the unions, so large
  objects weigh more (the number LAVT, ReferFormer and VD-IT report as "oIoU" / "overall IoU");
- **mIoU**: the mean of the per-sample IoUs (a sample whose prediction and ground truth are both empty counts 1);
- **P@X**: the share of samples with IoU above X, X in 0.5 ... 0.9.

Each sample is one (image, sentence) of a val json; the prediction is the mask of the query slot with the best score
(``models.hcd.best_query``, what ``inference.predictor.Predictor`` refines), thresholded at
``inference.threshold`` at the original image size, against the sample's mask at that size. ``refcoco_scores`` is
the pure part; ``evaluate_refcoco`` runs a model over the val sets (``main.py --eval`` on dataset ``refcoco``).
"""
import numpy as np

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
        raise ValueError("no samples to score")
    intersections = np.array([i for i, _ in counts], dtype=np.float64)
    unions = np.array([u for _, u in counts], dtype=np.float64)
    if (intersections > unions).any() or (intersections < 0).any():
        raise ValueError("every intersection must lie in [0, union]")
    ious = np.where(unions > 0, intersections / np.maximum(unions, 1), 1.0)
    scores = {"oIoU": float(intersections.sum() / unions.sum()) if unions.sum() else 1.0,
              "mIoU": float(ious.mean())}
    scores.update({f"P@{x}": float((ious > x).mean()) for x in PRECISION_THRESHOLDS})
    scores["samples"] = len(counts)
    return scores


def evaluate_refcoco(model, cfg: dict, amp: str = "none") -> dict:
    """Scores of ``model`` on the val json of each set of ``data.refcoco_sets`` (null: refcoco, refcoco+, refcocog)
    under ``data_root``: ``{set: refcoco_scores(...)}`` on rank 0, {} on the others. Under torchrun every rank
    segments every world_size-th sample."""
    from tqdm import tqdm

    from datasets.refcoco import SETS, RefCOCOImages
    from inference.predictor import Predictor
    from util.distributed import all_gather_objects, get_rank, get_world_size, is_main_process

    if amp == "fp16":
        raise ValueError("the RefCOCO evaluation runs in fp32 or bf16: pass --amp none or --amp bf16")
    predictor = Predictor(model, cfg, next(model.parameters()).device, amp)
    results = {}
    for name in cfg["data"]["refcoco_sets"] or SETS:
        dataset = RefCOCOImages(cfg["data_root"], name, "val")  # every set is checked before any inference
        counts = []
        for index in tqdm(range(get_rank(), len(dataset), get_world_size()), desc=f"eval {name}", unit="image",
                          disable=not is_main_process()):
            image, sentence, mask = dataset[index]
            predicted = predictor.segment([image], [sentence])[0, 0]  # bool [H, W] at the image's size
            counts.append(intersection_union(predicted, mask))
        gathered = all_gather_objects(counts)
        if is_main_process():
            results[name] = refcoco_scores([count for rank_counts in gathered for count in rank_counts])
    return results if is_main_process() else {}


def refcoco_table(results: dict) -> str:
    lines = ["RefCOCO-family val, top query per sample: oIoU = sum of intersections / sum of unions, mIoU = mean "
             "per-sample IoU"]
    lines.append(f"{'set':<10} {'samples':>8} {'oIoU':>7} {'mIoU':>7} " + " ".join(f"{'P@' + str(x):>6}"
                                                                             for x in PRECISION_THRESHOLDS))
    for name, scores in results.items():
        lines.append(f"{name:<10} {scores['samples']:>8} {100 * scores['oIoU']:7.2f} {100 * scores['mIoU']:7.2f} "
                     + " ".join(f"{100 * scores[f'P@{x}']:6.1f}" for x in PRECISION_THRESHOLDS))
    return "\n".join(lines)
