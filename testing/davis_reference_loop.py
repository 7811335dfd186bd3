"""The DAVIS-2017 unsupervised evaluation, frame by frame, as the official toolkit computes it.

A reference for ``benchmarks/bench_eval.py``: it follows the algorithm of
davisvideochallenge/davis2017-evaluation (``davis2017/metrics.py``, ``utils.py``, ``evaluation.py``) step by step
-- one (proposal, object) pair at a time, one frame at a time, a 1-px boundary map and two ``cv2.dilate`` calls per
pair and frame -- so that ``metrics/davis.py`` can be checked against it and timed against it. Written for this
project; it is not the toolkit's code.

Input conventions mirrored from the toolkit:
- ground truth: label 255 becomes background before anything else, the number of objects is the largest id of
  the *first* frame, so no pixel is ever void;
- results: the number of proposals is the largest id over all frames (more than 20 is refused); fewer proposals
  than objects are padded with empty masks;
- per-object rows come out in the order of the Hungarian assignment's rows (proposal order), as in the toolkit.
"""
import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

MAX_PROPOSALS = 20


def disk_kernel(radius: float) -> np.ndarray:
    """``[2r+1, 2r+1]`` uint8 disk, ``x^2 + y^2 <= r^2`` (what ``skimage.morphology.disk`` gives)."""
    offsets = np.arange(-radius, radius + 1)
    xs, ys = np.meshgrid(offsets, offsets)
    return (xs ** 2 + ys ** 2 <= radius ** 2).astype(np.uint8)


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """``[H, W]`` mask -> ``[H, W]`` bool 1-px boundary: a pixel differs from its right, lower or lower-right pixel."""
    seg = seg.astype(bool)
    right = np.zeros_like(seg)
    down = np.zeros_like(seg)
    diag = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    bmap[-1, :] = seg[-1, :] ^ right[-1, :]
    bmap[:, -1] = seg[:, -1] ^ down[:, -1]
    bmap[-1, -1] = False
    return bmap


def frame_iou(gt: np.ndarray, seg: np.ndarray, void: np.ndarray) -> np.ndarray:
    """``[T, H, W]`` masks -> ``[T]`` IoU ignoring void pixels; an empty union scores 1."""
    gt, seg, keep = gt.astype(bool), seg.astype(bool), ~void.astype(bool)
    inter = np.sum(seg & gt & keep, axis=(-2, -1))
    union = np.sum((seg | gt) & keep, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    iou[union == 0] = 1
    return iou


def frame_f_measure(seg: np.ndarray, gt: np.ndarray, void: np.ndarray, bound_th: float = 0.008) -> float:
    """Boundary F of one ``[H, W]`` frame."""
    void = void.astype(bool)
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(seg.shape))
    seg_b = boundary_map(seg * np.logical_not(void))
    gt_b = boundary_map(gt * np.logical_not(void))
    kernel = disk_kernel(bound_pix)
    seg_dil = cv2.dilate(seg_b.astype(np.uint8), kernel)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel)
    n_seg, n_gt = np.sum(seg_b), np.sum(gt_b)
    if n_seg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_seg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_seg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(seg_b * gt_dil) / float(n_seg)
        recall = np.sum(gt_b * seg_dil) / float(n_gt)
    if precision + recall == 0:
        return 0
    return 2 * precision * recall / (precision + recall)


def video_f(gt: np.ndarray, seg: np.ndarray, void: np.ndarray) -> np.ndarray:
    """``[T, H, W]`` masks -> ``[T]`` boundary F, one frame at a time."""
    return np.array([frame_f_measure(seg[t], gt[t], void[t]) for t in range(gt.shape[0])], dtype=np.float64)


def statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall (> 0.5) and decay (first minus last of 4 overlapping temporal bins) of ``[T]`` values."""
    mean = np.nanmean(values)
    recall = np.nanmean(values > 0.5)
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(int)
    bins = [values[edges[i]:edges[i + 1] + 1] for i in range(4)]
    return mean, recall, np.nanmean(bins[0]) - np.nanmean(bins[3])


def split_labels(labels: np.ndarray, num: int) -> np.ndarray:
    """``[T, H, W]`` label map -> ``[num, T, H, W]`` bool, one mask per id 1..num."""
    return labels[None] == np.arange(1, num + 1)[:, None, None, None]


def evaluate_video_loop(gt_labels: np.ndarray, res_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[T, H, W]`` GT and result label maps -> matched (J ``[N, T]``, F ``[N, T]``) rows, toolkit order."""
    gt_labels = np.where(gt_labels == 255, 0, gt_labels)
    num_objects = int(gt_labels[0].max())
    num_proposals = int(res_labels.max())
    if num_proposals > MAX_PROPOSALS:
        raise ValueError(f"{num_proposals} proposals, at most {MAX_PROPOSALS} are allowed")
    gt_masks = split_labels(gt_labels, num_objects)
    res_masks = split_labels(res_labels, num_proposals)
    if num_proposals < num_objects:
        padding = np.zeros((num_objects - num_proposals, *res_masks.shape[1:]), dtype=bool)
        res_masks = np.concatenate([res_masks, padding], axis=0)
    shape = (res_masks.shape[0], num_objects, gt_labels.shape[0])
    j_res, f_res = np.zeros(shape), np.zeros(shape)
    for ii in range(num_objects):
        for jj in range(res_masks.shape[0]):
            void = gt_masks[ii] == 255  # the masks are boolean here, so this is never true: as in the toolkit
            j_res[jj, ii] = frame_iou(gt_masks[ii], res_masks[jj], void)
            f_res[jj, ii] = video_f(gt_masks[ii], res_masks[jj], void)
    score = (np.mean(j_res, axis=2) + np.mean(f_res, axis=2)) / 2
    rows, cols = linear_sum_assignment(-score)
    return j_res[rows, cols], f_res[rows, cols]


def evaluate_loop(videos: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """``{video: (gt_labels, res_labels)}`` -> global J/F/JF means, recalls and decays, as the toolkit reports."""
    stats = {"J": [], "F": []}
    for gt_labels, res_labels in videos.values():
        j_rows, f_rows = evaluate_video_loop(gt_labels, res_labels)
        for ii in range(j_rows.shape[0]):
            stats["J"].append(statistics(j_rows[ii]))
            stats["F"].append(statistics(f_rows[ii]))
    j_stats, f_stats = np.array(stats["J"]), np.array(stats["F"])
    out = {
        "J": float(np.mean(j_stats[:, 0])), "J_recall": float(np.mean(j_stats[:, 1])),
        "J_decay": float(np.mean(j_stats[:, 2])),
        "F": float(np.mean(f_stats[:, 0])), "F_recall": float(np.mean(f_stats[:, 1])),
        "F_decay": float(np.mean(f_stats[:, 2])),
    }
    out["JF"] = (out["J"] + out["F"]) / 2
    return out

