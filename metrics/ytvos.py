"""Local J&F of Ref-YouTube-VOS-style predictions against a split that has ground truth.

Scores the tree that ``inference_ytvos.py`` writes (``Annotations/<video>/<exp_id>/<frame>.png``, 0/255 masks)
the way the Ref-YouTube-VOS server reports it: per expression, J and F (:mod:`metrics.jf`, F tolerance
``ceil(0.008 * image diagonal)``) averaged over the frames listed in the json; then J, F and J&F averaged over
expressions. Used for RefShapes' ``valid`` split and for held-out slices of Ref-YouTube-VOS train.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.ytvos import meta_expressions_path, read_meta_json
from metrics.jf import boundary_f, jaccard
from util.errors import UserInputError


def _read_png(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing {what} {path}")
    with Image.open(path) as image:
        array = np.array(image)
    if array.ndim != 2:
        raise UserInputError(f"{path}: expected a single-channel PNG (mode 'L' or 'P'), got mode {image.mode}")
    return array


def _object_id(video: str, exp_id: str, expression: dict) -> int:
    if "obj_id" not in expression:
        raise UserInputError(f"expression {video}/{exp_id} has no 'obj_id': scoring needs a split with ground truth "
                             f"(e.g. train or RefShapes valid), not the Ref-YouTube-VOS valid json")
    try:
        return int(expression["obj_id"])
    except (TypeError, ValueError) as err:
        raise UserInputError(f"expression {video}/{exp_id}: obj_id {expression['obj_id']!r} is not an integer id") from err


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def score_predictions(pred_dir: str | Path, gt_root: str | Path, split: str) -> dict:
    """Score a prediction tree against ``gt_root``'s ``split``.

    Args:
        pred_dir: folder holding ``Annotations/<video>/<exp_id>/<frame>.png``, or that ``Annotations`` folder
            itself. A pixel > 0 is foreground.
        gt_root: dataset root with ``meta_expressions/<split>/meta_expressions.json`` (expressions with ``exp``,
            ``obj_id`` and optionally ``kind``) and ``<split>/Annotations/<video>/<frame>.png`` (palette PNGs,
            pixel = object id).
        split: split folder name, e.g. ``"valid"`` or ``"train"``.

    Returns:
        ``{"J", "F", "JF", "per_expression": {"<video>/<exp_id>": {"J", "F", "JF", "kind"}},
        "by_kind": {kind: {"J", "F", "JF", "count"}}}``; ``kind`` is None for expressions without one, and
        those are left out of ``by_kind``.
    """
    pred_dir, gt_root = Path(pred_dir), Path(gt_root)
    if (pred_dir / "Annotations").is_dir():
        pred_dir = pred_dir / "Annotations"
    meta_path = meta_expressions_path(gt_root, split)
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found; gt_root must be a dataset root in the Ref-YouTube-VOS layout")
    videos = read_meta_json(meta_path)
    annotations = gt_root / split / "Annotations"

    per_expression = {}
    for video, meta in videos.items():
        frames = meta["frames"]
        gt_labels = None  # read once per video, only if it has expressions
        for exp_id, expression in meta["expressions"].items():
            obj_id = _object_id(video, exp_id, expression)
            if gt_labels is None:
                gt_labels = np.stack([_read_png(annotations / video / f"{frame}.png", f"ground truth of video {video}, "
                                                f"frame {frame}:") for frame in frames])
            pred = np.stack([
                _read_png(pred_dir / video / exp_id / f"{frame}.png",
                          f"prediction for video {video}, expression {exp_id}, frame {frame}:")
                for frame in frames]) > 0
            if pred.shape != gt_labels.shape:
                raise UserInputError(f"predictions of {video}/{exp_id} are {pred.shape[1:]} (H, W) per frame, the "
                                     f"ground truth is {gt_labels.shape[1:]}; write masks at the original resolution")
            gt = gt_labels == obj_id
            j, f = float(np.mean(jaccard(pred, gt))), float(np.mean(boundary_f(pred, gt)))
            per_expression[f"{video}/{exp_id}"] = {"J": j, "F": f, "JF": (j + f) / 2, "kind": expression.get("kind")}
    if not per_expression:
        raise UserInputError(f"{meta_path} lists no expressions to score")
    return {**summarize(per_expression), "per_expression": per_expression}


def summarize(per_expression: dict[str, dict]) -> dict:
    """``{"J", "F", "JF", "by_kind"}`` of per-expression scores ``{"J", "F", "kind"}``: the means over all
    expressions, and per kind (expressions whose kind is None are left out of ``by_kind``)."""
    by_kind = {}
    for kind in sorted({s["kind"] for s in per_expression.values() if s["kind"] is not None}):
        scores = [s for s in per_expression.values() if s["kind"] == kind]
        j, f = _mean([s["J"] for s in scores]), _mean([s["F"] for s in scores])
        by_kind[kind] = {"J": j, "F": f, "JF": (j + f) / 2, "count": len(scores)}
    j = _mean([s["J"] for s in per_expression.values()])
    f = _mean([s["F"] for s in per_expression.values()])
    return {"J": j, "F": f, "JF": (j + f) / 2, "by_kind": by_kind}
