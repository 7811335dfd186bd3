"""A2D-Sentences / JHMDB-Sentences metrics: COCO mask mAP and the IoU / precision@K of the top prediction.

Conventions of MTTR's ``metrics.py`` (copied by ReferFormer, SgMg and VD-IT as ``datasets/a2d_eval.py``), so that
numbers compare with the literature:

- **mAP** (AP@[.5:.95], AP50, AP75): pycocotools ``COCOeval(iouType="segm")`` with ``params.useCats = 0``, fed
  with *all* query predictions of every sample with their scores (not only the best one). Ground truth is one
  "image" per (video, frame, instance) sample with a single dummy category.
- **IoU and P@K** use, per image_id, only the highest-scoring prediction (on a tie, the one listed last, as MTTR's
  stable sort picks it). Per sample IoU = (I + 1e-6) / (U + 1e-6) computed in float32 as MTTR's torch code does,
  so an empty prediction of an empty mask scores 1 and the float32 rounding of values at the P@K thresholds
  matches. overall IoU = sum of I / sum of U over samples; mean IoU = mean of the per-sample IoUs;
  P@K = fraction of samples with IoU strictly above K, K in 0.5 ... 0.9.
"""
import contextlib
import copy
import io
from collections.abc import Iterable

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from util.errors import UserInputError
from util.mask_rle import mask_to_rle, rle_to_mask

IOU_EPS = 1e-6
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
CATEGORY_ID = 1


def build_coco_ground_truth(samples: Iterable[tuple[str | int, np.ndarray]]) -> dict:
    """``(image_id, [H, W] bool mask)`` pairs -> a COCO-format ground-truth dict (one annotation per image).

    Category 1 is the only (dummy) category and annotation ids count from 1, as pycocotools expects.
    """
    images, annotations = [], []
    for image_id, mask in samples:
        if mask.ndim != 2:
            raise ValueError(f"ground-truth mask of image {image_id!r} must be [H, W], got shape {mask.shape}")
        rle = mask_to_rle(mask)
        encoded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        images.append({"id": image_id, "height": int(mask.shape[0]), "width": int(mask.shape[1])})
        annotations.append({
            "id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_ID, "segmentation": rle,
            "area": float(coco_mask.area(encoded)), "bbox": [float(v) for v in coco_mask.toBbox(encoded)],
            "iscrowd": 0,
        })
    ids = [image["id"] for image in images]
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be unique: each (video, frame, instance) sample is one image")
    return {"images": images, "annotations": annotations,
            "categories": [{"id": CATEGORY_ID, "name": "object"}]}


def _coco_map(predictions: list[dict], ground_truth: dict) -> tuple[float, float, float]:
    """(AP@[.5:.95], AP50, AP75) of class-agnostic mask predictions."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(ground_truth)  # COCOeval writes into the annotations
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([{**p, "category_id": CATEGORY_ID} for p in predictions])
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.useCats = 0
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1]), float(evaluator.stats[2])


def _top_iou(predictions: list[dict], ground_truth: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> per ground-truth image: (IoU, intersection, union) of its highest-scoring prediction.

    The IoU is computed in float32 (MTTR's torch arithmetic) and returned as float64, so that the P@K comparisons
    happen in float64 against the thresholds, as MTTR's ``iou.item() > K`` does.
    """
    best = {}
    for prediction in predictions:  # ">=": on equal scores the later prediction wins, as in MTTR
        current = best.get(prediction["image_id"])
        if current is None or prediction["score"] >= current["score"]:
            best[prediction["image_id"]] = prediction
    ious, inters, unions = [], [], []
    for annotation in ground_truth["annotations"]:
        image_id = annotation["image_id"]
        if image_id not in best:
            raise UserInputError(f"no prediction for image_id {image_id!r}: every ground-truth sample needs at "
                                 f"least one")
        gt = rle_to_mask(annotation["segmentation"])
        pred = rle_to_mask(best[image_id]["segmentation"])
        if pred.shape != gt.shape:
            raise UserInputError(f"prediction for image_id {image_id!r} is {pred.shape}, the ground truth {gt.shape}")
        inter, union = np.count_nonzero(pred & gt), np.count_nonzero(pred | gt)
        ious.append(float((np.float32(inter) + np.float32(IOU_EPS)) / (np.float32(union) + np.float32(IOU_EPS))))
        inters.append(inter)
        unions.append(union)
    return np.array(ious), np.array(inters), np.array(unions)


def a2d_metrics(predictions: list[dict], ground_truth: dict) -> dict:
    """Score predictions on A2D/JHMDB-Sentences.

    Args:
        predictions: every query's prediction, ``{"image_id", "segmentation" (RLE, see util.mask_rle), "score"}``.
        ground_truth: COCO-format dict from :func:`build_coco_ground_truth`, one annotation per image.

    Returns:
        ``{"mAP", "AP50", "AP75", "overall_iou", "mean_iou", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9"}``.
    """
    if not predictions:
        raise UserInputError("a2d_metrics needs at least one prediction")
    known = {image["id"] for image in ground_truth["images"]}
    unknown = {p["image_id"] for p in predictions} - known
    if unknown:
        raise UserInputError(f"predictions for image ids that are not in the ground truth: "
                             f"{sorted(map(str, unknown))[:5]}")
    m_ap, ap50, ap75 = _coco_map(predictions, ground_truth)
    ious, inters, unions = _top_iou(predictions, ground_truth)
    out = {"mAP": m_ap, "AP50": ap50, "AP75": ap75,
           # all masks empty: nothing to miss (MTTR would divide by zero)
           "overall_iou": float(inters.sum() / unions.sum()) if unions.sum() > 0 else 1.0,
           "mean_iou": float(np.mean(ious))}
    out.update({f"P@{k}": float(np.mean(ious > k)) for k in PRECISION_THRESHOLDS})
    return out


def top1_predictions(predictions: list[dict]) -> list[dict]:
    """The highest-scoring prediction per image_id (on a tie the later one, as ``a2d_metrics`` picks it)."""
    best = {}
    for prediction in predictions:
        current = best.get(prediction["image_id"])
        if current is None or prediction["score"] >= current["score"]:
            best[prediction["image_id"]] = prediction
    return list(best.values())


def a2d_results(predictions: list[dict], ground_truth: dict) -> dict:
    """What the A2D / JHMDB protocol reports: ``a2d_metrics`` over all slots' predictions, the mAP of the
    top-scoring slot alone (``mAP_top1``, ``AP50_top1``, ``AP75_top1``; ReferFormer#39), ``num_samples`` and
    ``"map_over": "all_queries"``."""
    results = a2d_metrics(predictions, ground_truth)
    top1 = a2d_metrics(top1_predictions(predictions), ground_truth)
    results.update({f"{key}_top1": top1[key] for key in ("mAP", "AP50", "AP75")})
    results["num_samples"] = len(ground_truth["images"])
    results["map_over"] = "all_queries"
    return results
