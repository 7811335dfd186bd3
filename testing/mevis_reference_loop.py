"""MeViS's valid_u evaluation, one expression and one frame at a time, as the official ``tools/eval_mevis.py`` does.

A reference for ``tests/metrics/test_mevis.py`` and ``benchmarks/bench_mevis_eval.py``, written for this project
from a reading of henghuiding/MeViS ``tools/eval_mevis.py`` and ``tools/metrics.py`` (not their code). Per
expression, in one process (the official script spreads the expressions over 64 worker processes):

- a video without a folder under the prediction root scores ``[0, 0]``;
- the frame size is that of the prediction ``00000.png``; the ground truth starts as zeros of that size and each
  ``anno_id``'s decoded RLE is *added* to it, frame by frame (uint8; ``null`` adds nothing);
- each frame's prediction is ``cv2.imread(..., IMREAD_GRAYSCALE)``;
- J is ``db_eval_iou(gt, pred).mean()`` and F ``db_eval_boundary(gt, pred).mean()`` with ``bound_th`` 0.008;
  ``metrics.py`` is the davis2017 toolkit's, so its per-frame functions are the ones of
  ``testing/davis_reference_loop.py`` (no void pixels here);
- the result is the mean of J and of F over the expressions, and J&F their mean.
"""
import json
import os
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from testing.davis_reference_loop import frame_iou, video_f


def expression_loop(exp_dict: dict, mask_dict: dict, pred_path: Path, video: str, exp_id: str) -> tuple[float, float]:
    """``(J, F)`` of one expression, as ``eval_queue`` computes it."""
    entry = exp_dict[video]
    if not os.path.exists(f"{pred_path}/{video}"):
        return 0.0, 0.0
    first = cv2.imread(f"{pred_path}/{video}/{exp_id}/00000.png", cv2.IMREAD_GRAYSCALE)
    height, width = first.shape
    num_frames = len(entry["frames"])
    gt = np.zeros((num_frames, height, width), dtype=np.uint8)
    pred = np.zeros((num_frames, height, width), dtype=np.uint8)
    for index, frame in enumerate(entry["frames"]):
        for anno_id in entry["expressions"][exp_id]["anno_id"]:
            rle = mask_dict[str(anno_id)][index]
            if rle:
                gt[index] += coco_mask.decode(rle)
        pred[index] = cv2.imread(f"{pred_path}/{video}/{exp_id}/{frame}.png", cv2.IMREAD_GRAYSCALE)
    no_void = np.zeros(gt.shape, dtype=bool)
    return float(frame_iou(gt, pred, no_void).mean()), float(video_f(gt, pred, no_void).mean())


def evaluate_mevis_loop(meta_json: Path, mask_json: Path, pred_path: Path) -> dict:
    """``{"J", "F", "JF", "per_expression": {"<video>/<exp_id>": (J, F)}}`` of a prediction folder."""
    exp_dict = json.loads(Path(meta_json).read_text())["videos"]
    mask_dict = json.loads(Path(mask_json).read_text())
    per_expression = {f"{video}/{exp_id}": expression_loop(exp_dict, mask_dict, pred_path, video, exp_id)
                      for video in exp_dict for exp_id in exp_dict[video]["expressions"]}
    j = float(np.mean([value[0] for value in per_expression.values()]))
    f = float(np.mean([value[1] for value in per_expression.values()]))
    return {"J": j, "F": f, "JF": (j + f) / 2, "per_expression": per_expression}
