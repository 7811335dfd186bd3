"""MeViS J&F of a prediction tree, computed as the benchmark's official ``tools/eval_mevis.py`` computes it.

Per expression of ``<gt_root>/<split>/meta_expressions.json``:

- ground truth: per frame, the union of the masks of the expression's ``anno_id`` list in
  ``<gt_root>/<split>/mask_dict.json`` (null: that object is absent from the frame);
- prediction: ``<pred_dir>/<video>/<exp_id>/<frame>.png`` for every frame of the json, read as 8-bit grayscale
  with OpenCV as the official script reads it; a non-zero pixel is foreground. It must have the ground truth's size;
- J: IoU per frame, 1 where both masks are empty. F: the DAVIS boundary F-measure with ``bound_th`` 0.008
  (``metrics.jf``, which follows the official ``metrics.py``: the same 1-px boundary map, a
  ``skimage.morphology.disk`` of radius ``ceil(0.008 * diagonal)`` and ``cv2.dilate``). Each is averaged over
  the frames.

J and F are then averaged over the expressions, and J&F is their mean. A video without a prediction folder scores
J = F = 0 for each of its expressions, as in the official script, with a warning naming it; a missing PNG inside a
video folder that exists is an error (the official script stops there too). The official script re-decodes every
mask and dilates every boundary over the whole frame for each expression; here each object's masks are decoded once
per video and ``metrics.jf`` dilates only around each mask (``benchmarks/bench_mevis_eval.py`` times both).
"""
import warnings
from pathlib import Path

import cv2
import numpy as np

from datasets.errors import DatasetFormatError
from datasets.mevis import (count_expressions, expression_annos, mask_dict_path, meta_path, mevis_version)
from datasets.mevis_masks import load_mask_store
from datasets.ytvos import check_video_entry, read_meta_json
from metrics.jf import boundary_f, jaccard
from metrics.ytvos import summarize
from util.errors import UserInputError


def read_prediction(pred_dir: Path, video: str, exp_id: str, frames: list[str]) -> np.ndarray:
    """bool ``[T, H, W]``: the PNGs of one expression, a pixel > 0 foreground (read as ``eval_mevis.py`` does)."""
    masks = []
    for frame in frames:
        path = pred_dir / video / exp_id / f"{frame}.png"
        if not path.is_file():
            raise FileNotFoundError(f"prediction for video {video!r}, expression {exp_id!r}, frame {frame!r}: "
                                    f"{path} is missing (the video folder exists, so every frame is needed)")
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise DatasetFormatError(f"prediction for video {video!r}, expression {exp_id!r}, frame {frame!r}: "
                                     f"{path} is not a readable image")
        if masks and mask.shape != masks[0].shape:
            raise DatasetFormatError(f"prediction for video {video!r}, expression {exp_id!r}: frame {frame!r} is "
                                     f"{mask.shape[1]}x{mask.shape[0]} but frame {frames[0]!r} is "
                                     f"{masks[0].shape[1]}x{masks[0].shape[0]} (WxH)")
        masks.append(mask > 0)
    return np.stack(masks)


def score_mevis(pred_dir: str | Path, gt_root: str | Path, split: str = "valid_u") -> dict:
    """Score ``pred_dir`` against ``gt_root``'s ``split`` (one with ``mask_dict.json``: valid_u or train).

    Returns ``{"J", "F", "JF", "expressions": N, "version": "v1" | "v2" | "unknown" (by the number of
    expressions), "per_expression": {"<video>/<exp_id>": {"J", "F"}}, "by_kind": {kind: {"J", "F", "JF",
    "count"}}, "missing_videos": [...]}``; ``by_kind`` is empty unless the json gives each expression a ``kind``
    (RefShapes does).
    """
    pred_dir, gt_root = Path(pred_dir), Path(gt_root)
    path = meta_path(gt_root, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; gt_root must be a MeViS root (<split>/meta_expressions.json and "
                                f"<split>/mask_dict.json)")
    videos = read_meta_json(path)
    for video, entry in videos.items():
        check_video_entry(path, video, entry)
    if not count_expressions(videos):
        raise UserInputError(f"{path} lists no expressions to score")
    annos = expression_annos(path, videos)
    store = load_mask_store(mask_dict_path(gt_root, split), annos,
                            {video: entry["frames"] for video, entry in videos.items()})

    scores, missing = {}, []
    for video, entry in videos.items():
        frames, expressions = entry["frames"], entry["expressions"]
        if not (pred_dir / video).is_dir():
            missing.append(video)
            warnings.warn(f"{pred_dir / video} not found: its {len(expressions)} expressions score J = F = 0, as in "
                          f"the official eval_mevis.py")
            scores.update({f"{video}/{exp_id}": {"J": 0.0, "F": 0.0, "kind": expression.get("kind")}
                           for exp_id, expression in expressions.items()})
            continue
        object_masks = {}  # anno id -> bool [T, H, W], decoded once per video
        for exp_id, expression in expressions.items():
            pred = read_prediction(pred_dir, video, exp_id, frames)
            size = store.sizes[video]
            if size is not None and pred.shape[1:] != size:
                raise UserInputError(f"predictions of {video}/{exp_id} are {pred.shape[2]}x{pred.shape[1]} (WxH), the "
                                     f"ground truth is {size[1]}x{size[0]}; write masks at the original resolution")
            gt = np.zeros_like(pred)
            for anno_id in annos[video][exp_id]:
                if anno_id not in object_masks:
                    object_masks[anno_id] = store.union(video, exp_id, [anno_id], range(len(frames)), pred.shape[1:])
                gt |= object_masks[anno_id]
            scores[f"{video}/{exp_id}"] = {"J": float(np.mean(jaccard(pred, gt))),
                                           "F": float(np.mean(boundary_f(pred, gt))), "kind": expression.get("kind")}
    return {
        **summarize(scores),
        "expressions": len(scores),
        "version": mevis_version(split, len(scores)),
        "per_expression": {name: {"J": s["J"], "F": s["F"]} for name, s in scores.items()},
        "missing_videos": missing,
    }
