"""Region similarity J, boundary F-measure and their per-sequence statistics, as the DAVIS benchmark defines them.

The definitions follow the official davis2017-evaluation toolkit (``davis2017/metrics.py``, ``utils.py``) and give
its numbers bit for bit:

- **J** (Jaccard): per frame, ``|pred & gt| / |pred | gt|`` counted over non-void pixels; an empty union scores 1.
- **F** (boundary): void pixels are first removed from both masks. Each mask gets a 1-px boundary map (a pixel is
  on the boundary when it differs from its right, lower or lower-right neighbour; see :func:`boundary_map`).
  A predicted boundary pixel is matched when a ground-truth boundary pixel lies within a disk of radius
  ``tolerance_px`` around it (the toolkit dilates with ``skimage.morphology.disk`` through ``cv2.dilate``), and
  the other way round. Precision P = matched predicted / predicted, recall R = matched GT / GT,
  F = 2PR / (P + R), with the toolkit's edge cases: both boundaries empty -> P = R = 1; no predicted boundary
  but a GT one -> P = 1, R = 0; a predicted boundary but no GT one -> P = 0, R = 1; P + R = 0 -> F = 0.
- **statistics** (:func:`db_statistics`): mean, recall (fraction of frames above 0.5) and decay (mean of the
  first of 4 overlapping temporal bins minus mean of the last).

Speed: :func:`pairwise_jf` scores every (prediction, object) pair of a video at once. Dilation is local, so each
mask is handled inside its bounding box grown by the tolerance: boundary maps and dilations are computed once per
mask and frame on that crop (not once per pair and full frame as in the toolkit), and a pair's matches are counted
by looking the sparse boundary pixels of one mask up in the dilated crop of the other.
"""
import warnings
from typing import NamedTuple

import cv2
import numpy as np

DEFAULT_BOUND_TH = 0.008


def tolerance_px(bound_th: float, height: int, width: int) -> int:
    """Boundary tolerance in pixels: ``bound_th`` itself when >= 1, else ``ceil(bound_th * sqrt(H^2 + W^2))``.

    480x854 frames with the default 0.008 give 8 px.
    """
    if bound_th >= 1:
        if not float(bound_th).is_integer():
            raise ValueError(f"a pixel tolerance (bound_th >= 1) must be a whole number of pixels, got {bound_th}")
        return int(bound_th)
    if bound_th <= 0:
        raise ValueError(f"bound_th must be positive (a fraction of the image diagonal or pixels), got {bound_th}")
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def disk(radius: int) -> np.ndarray:
    """``[2r+1, 2r+1]`` uint8 structuring element with ones where ``dx^2 + dy^2 <= r^2``."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[None, :] ** 2 + offsets[:, None] ** 2 <= radius ** 2).astype(np.uint8)


def boundary_map(masks: np.ndarray) -> np.ndarray:
    """``[..., H, W]`` bool masks -> ``[..., H, W]`` bool 1-px boundaries (the toolkit's ``_seg2bmap``).

    Inside the image a pixel is a boundary pixel when it differs from its right, lower or lower-right
    neighbour. Pixels of the last row compare with their right neighbour only, pixels of the last column with
    their lower neighbour only, and the bottom-right pixel is never a boundary pixel. The boundary therefore
    sits half a pixel up-left of the true contour, and a mask filling the whole image has none.
    """
    masks = masks.astype(bool, copy=False)
    differs_right = masks[..., :, :-1] ^ masks[..., :, 1:]  # [..., H, W-1]
    differs_down = masks[..., :-1, :] ^ masks[..., 1:, :]  # [..., H-1, W]
    differs_diag = masks[..., :-1, :-1] ^ masks[..., 1:, 1:]  # [..., H-1, W-1]
    bmap = np.zeros_like(masks)
    bmap[..., :-1, :-1] = differs_right[..., :-1, :] | differs_down[..., :, :-1] | differs_diag
    bmap[..., -1, :-1] = differs_right[..., -1, :]
    bmap[..., :-1, -1] = differs_down[..., :, -1]
    return bmap


def _check_shapes(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} masks differ in shape")
    if void is not None and void.shape != gt.shape:
        raise ValueError(f"void mask {void.shape} and ground truth {gt.shape} differ in shape")


def jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """``[T, H, W]`` bool prediction, ground truth and optional void -> ``[T]`` float64 IoU (empty union -> 1)."""
    _check_shapes(pred, gt, void)
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    if void is not None:
        keep = ~void.astype(bool, copy=False)
        pred, gt = pred & keep, gt & keep
    # One frame at a time: a whole-array count_nonzero is several times faster than one along axes.
    pred_rows, gt_rows = pred.reshape(-1, *pred.shape[-2:]), gt.reshape(-1, *gt.shape[-2:])
    inter = np.array([np.count_nonzero(p & g) for p, g in zip(pred_rows, gt_rows)], dtype=np.int64)
    areas = np.array([np.count_nonzero(p) + np.count_nonzero(g) for p, g in zip(pred_rows, gt_rows)], dtype=np.int64)
    inter, union = inter.reshape(pred.shape[:-2]), (areas - inter).reshape(pred.shape[:-2])
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(union == 0, 1.0, iou)


def boundary_f(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
               bound_th: float = DEFAULT_BOUND_TH) -> np.ndarray:
    """``[T, H, W]`` bool prediction, ground truth and optional void -> ``[T]`` float64 boundary F-measure."""
    _check_shapes(pred, gt, void)
    _, f = pairwise_jf(pred[None], gt[None], void, bound_th)
    return f[0, 0]


class _Crop(NamedTuple):
    """One non-empty mask of one frame, reduced to what pair scoring needs (frame coordinates)."""
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 of the mask, inclusive
    area: int
    boundary_yx: tuple[np.ndarray, np.ndarray]  # coordinates of the boundary pixels, each [P]
    dilated: np.ndarray  # [h, w] uint8 dilated boundary, zero outside this window
    origin: tuple[int, int]  # frame coordinates of dilated[0, 0]


def _crops(masks: np.ndarray, radius: int) -> list[_Crop | None]:
    """``[M, H, W]`` bool masks -> per mask its :class:`_Crop`, or None when the mask is empty."""
    _, height, width = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [M, H], [M, W]
    y0s, y1s = rows.argmax(axis=1), height - 1 - rows[:, ::-1].argmax(axis=1)
    x0s, x1s = cols.argmax(axis=1), width - 1 - cols[:, ::-1].argmax(axis=1)
    kernel = disk(radius)
    crops = []
    for mask, nonempty, y0, y1, x0, x1 in zip(masks, rows.any(axis=1), y0s, y1s, x0s, x1s):
        if not nonempty:
            crops.append(None)
            continue
        # The boundary lies within one pixel of the box and its dilation within `radius` more: a window that
        # large (clipped to the image) holds both exactly, the image-edge rules included.
        top, left = max(y0 - 1 - radius, 0), max(x0 - 1 - radius, 0)
        bottom, right = min(y1 + 2 + radius, height), min(x1 + 2 + radius, width)
        window = mask[top:bottom, left:right]
        bmap = boundary_map(window).view(np.uint8)
        points = cv2.findNonZero(bmap)  # (x, y) int32 rows, [P, 2] or [P, 1, 2] by OpenCV version; None if P = 0
        points = np.zeros((0, 2), dtype=np.int32) if points is None else points.reshape(-1, 2)
        crops.append(_Crop(
            box=(int(y0), int(y1), int(x0), int(x1)),
            area=int(np.count_nonzero(window)),
            boundary_yx=(points[:, 1] + top, points[:, 0] + left),
            dilated=cv2.dilate(bmap, kernel),
            origin=(top, left),
        ))
    return crops


def _apart(a: _Crop, b: _Crop) -> bool:
    """True when the windows do not overlap: the masks share no pixel and no boundary pixel is near the other."""
    return (a.origin[0] >= b.origin[0] + b.dilated.shape[0] or b.origin[0] >= a.origin[0] + a.dilated.shape[0]
            or a.origin[1] >= b.origin[1] + b.dilated.shape[1] or b.origin[1] >= a.origin[1] + a.dilated.shape[1])


def _matched(points: _Crop, target: _Crop) -> int:
    """How many boundary pixels of ``points`` fall on the dilated boundary of ``target``."""
    ys = points.boundary_yx[0] - target.origin[0]
    xs = points.boundary_yx[1] - target.origin[1]
    h, w = target.dilated.shape
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    return int(np.count_nonzero(target.dilated[ys[inside], xs[inside]]))


def _intersection(pred_mask: np.ndarray, gt_mask: np.ndarray, pred: _Crop, gt: _Crop) -> int:
    """Pixels in both ``[H, W]`` masks, counted over the overlap of their boxes."""
    y0, y1 = max(pred.box[0], gt.box[0]), min(pred.box[1], gt.box[1])
    x0, x1 = max(pred.box[2], gt.box[2]), min(pred.box[3], gt.box[3])
    if y0 > y1 or x0 > x1:
        return 0
    return int(np.count_nonzero(pred_mask[y0:y1 + 1, x0:x1 + 1] & gt_mask[y0:y1 + 1, x0:x1 + 1]))


def pairwise_jf(preds: np.ndarray, gts: np.ndarray, void: np.ndarray | None = None,
                bound_th: float = DEFAULT_BOUND_TH) -> tuple[np.ndarray, np.ndarray]:
    """J and F of every (prediction, object) pair in every frame.

    Args:
        preds: ``[K, T, H, W]`` bool predicted masks.
        gts: ``[N, T, H, W]`` bool ground-truth masks.
        void: optional ``[T, H, W]`` bool pixels to ignore, shared by all objects of a frame.
        bound_th: boundary tolerance, see :func:`tolerance_px`.

    Returns:
        (J ``[K, N, T]``, F ``[K, N, T]``) float64, equal to calling the toolkit's ``db_eval_iou`` and
        ``db_eval_boundary`` on each pair.
    """
    if preds.ndim != 4 or gts.ndim != 4 or preds.shape[1:] != gts.shape[1:]:
        raise ValueError(f"expected [K, T, H, W] predictions and [N, T, H, W] ground truth with the same T, H, W; "
                         f"got {preds.shape} and {gts.shape}")
    num_preds, num_gts = preds.shape[0], gts.shape[0]
    num_frames, height, width = gts.shape[1:]
    if void is not None and void.shape != gts.shape[1:]:
        raise ValueError(f"void mask {void.shape} does not match the frames {gts.shape[1:]}")
    preds, gts = preds.astype(bool, copy=False), gts.astype(bool, copy=False)
    if void is not None:
        # Removing void pixels from both masks gives the toolkit's J (void excluded from both counts) and F.
        keep = ~void.astype(bool, copy=False)
        preds, gts = preds & keep, gts & keep
    radius = tolerance_px(bound_th, height, width)
    pred_crops = _crops(preds.reshape(-1, height, width), radius)  # K*T, index k*T + t
    gt_crops = _crops(gts.reshape(-1, height, width), radius)  # N*T, index n*T + t

    inter = np.zeros((num_preds, num_gts, num_frames), dtype=np.int64)
    pred_area = np.zeros((num_preds, 1, num_frames), dtype=np.int64)
    gt_area = np.zeros((1, num_gts, num_frames), dtype=np.int64)
    pred_hits = np.zeros((num_preds, num_gts, num_frames), dtype=np.int64)  # predicted boundary px near GT's
    gt_hits = np.zeros((num_preds, num_gts, num_frames), dtype=np.int64)  # GT boundary px near predicted
    pred_len = np.zeros((num_preds, 1, num_frames), dtype=np.int64)
    gt_len = np.zeros((1, num_gts, num_frames), dtype=np.int64)
    for n in range(num_gts):
        for t in range(num_frames):
            crop = gt_crops[n * num_frames + t]
            if crop is not None:
                gt_area[0, n, t], gt_len[0, n, t] = crop.area, len(crop.boundary_yx[0])
    for k in range(num_preds):
        for t in range(num_frames):
            pred = pred_crops[k * num_frames + t]
            if pred is None:
                continue
            pred_area[k, 0, t], pred_len[k, 0, t] = pred.area, len(pred.boundary_yx[0])
            for n in range(num_gts):
                gt = gt_crops[n * num_frames + t]
                if gt is None or _apart(pred, gt):
                    continue
                inter[k, n, t] = _intersection(preds[k, t], gts[n, t], pred, gt)
                pred_hits[k, n, t] = _matched(pred, gt)
                gt_hits[k, n, t] = _matched(gt, pred)

    union = pred_area + gt_area - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.where(union == 0, 1.0, inter / union)
        precision = np.where(pred_len == 0, 1.0, pred_hits / pred_len.astype(np.float64))
        recall = np.where(gt_len == 0, 1.0, gt_hits / gt_len.astype(np.float64))
        # Toolkit edge case: a predicted boundary but none in the GT -> P = 0 (R = 1 above).
        precision = np.where((pred_len > 0) & (gt_len == 0), 0.0, precision)
        # Toolkit edge case: no predicted boundary but a GT one -> R = 0 (P = 1 above).
        recall = np.where((pred_len == 0) & (gt_len > 0), 0.0, recall)
        f = np.where(precision + recall == 0, 0.0, 2 * precision * recall / (precision + recall))
    return np.ascontiguousarray(j), np.ascontiguousarray(f)


def db_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """``[T]`` per-frame J or F -> (mean, recall, decay), as the toolkit's ``db_statistics``.

    mean: NaN-ignoring mean. recall: fraction of frames with a value > 0.5. decay: NaN-ignoring mean of the first
    minus that of the last of 4 temporal bins; the bin edges are ``round(linspace(1, T, 5)) - 1`` and each bin
    includes its right edge, so neighbouring bins share a frame. (The toolkit stores the edges as uint8, which
    wraps for T > 256 frames; we keep exact integers, identical below that length.)
    """
    values = np.asarray(per_frame, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"db_statistics expects a non-empty [T] array, got shape {values.shape}")
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    bins = [values[edges[i]:edges[i + 1] + 1] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN input gives NaN, as in the toolkit
        mean = np.nanmean(values)
        recall = np.mean(values > 0.5)
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)
