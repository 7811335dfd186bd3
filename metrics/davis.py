"""DAVIS-2017 *unsupervised* evaluation, the protocol Ref-DAVIS17 results are reported with.

Gives the numbers of the official davis2017-evaluation toolkit (``DAVISEvaluation(task='unsupervised')``) to
floating-point precision, much faster (see ``benchmarks/bench_eval.py``). The protocol, per video:

1. Ground truth: ``Annotations_unsupervised/480p/<video>/*.png`` (palette PNGs, pixel = object id), frames in
   file-name order. As in the toolkit, label 255 is turned into background before anything else (so no pixel is
   void in this task) and the objects are ids 1..N with N the largest id of the *first* frame.
2. Results: ``<results_dir>/<video>/<frame>.png`` for every annotated frame, indexed PNGs whose ids 1..K are
   proposals (K = largest id over the video; more than 20 is an error). With fewer proposals than objects, empty
   proposals are added, so an unmatched object scores 0 where it is visible and 1 where it is absent, as in the
   toolkit.
3. J and F of every (proposal, object) pair on every frame, the first and last included; the Hungarian
   assignment (``scipy.optimize.linear_sum_assignment``) maximises the sum over pairs of the frame-mean (J + F) / 2.
4. Per object: mean, recall and decay of its matched J and F (:func:`metrics.jf.db_statistics`).
5. Global J (F) = mean over all objects of all videos of the object means; JF = (J + F) / 2; recalls and decays
   likewise averaged over objects.

One difference in presentation only: ``per_object`` is keyed ``<video>_<gt id>`` by the ground-truth object;
the toolkit's per-sequence table names its rows by the order of the matched proposals instead.
"""
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from metrics.jf import db_statistics, pairwise_jf
from util.errors import UserInputError

MAX_PROPOSALS = 20
VOID_LABEL = 255
_CHUNK_PIXELS = 1 << 23  # mask pixels (bytes) per chunk of frames


def read_label_png(path: Path) -> np.ndarray:
    """Indexed (palette or grey) PNG -> ``[H, W]`` array of its ids."""
    with Image.open(path) as image:
        labels = np.array(image)
    if labels.ndim != 2:
        raise UserInputError(f"{path}: expected an indexed (palette 'P' or grey 'L') PNG whose pixels are object ids, "
                             f"got mode {image.mode} with shape {labels.shape}")
    return labels


def match_video(gt_labels: np.ndarray, res_labels: np.ndarray, video: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Score one video: the J and F of each ground-truth object under the Hungarian proposal assignment.

    Args:
        gt_labels: ``[T, H, W]`` ground-truth ids (0 background, 255 void, read as background).
        res_labels: ``[T, H, W]`` proposal ids (0 background, 1..K proposals, K <= 20).
        video: name used in error messages.

    Returns:
        (J ``[N, T]``, F ``[N, T]``) float64, row i for ground-truth object i + 1.
    """
    if gt_labels.shape != res_labels.shape:
        raise UserInputError(f"video {video}: results {res_labels.shape} and annotations {gt_labels.shape} differ in "
                             f"shape")
    num_frames, height, width = gt_labels.shape
    first = gt_labels[0]
    # Void counts as background: object ids stop below 255, so the masks below never include void pixels.
    num_objects = int(first[first != VOID_LABEL].max(initial=0))
    num_proposals = int(res_labels.max())
    if num_proposals > MAX_PROPOSALS:
        raise UserInputError(f"video {video}: the result PNGs hold id {num_proposals}, but at most {MAX_PROPOSALS} "
                             f"proposals (ids 1..{MAX_PROPOSALS}, 0 = background) are allowed")
    if num_objects == 0:
        return np.zeros((0, num_frames)), np.zeros((0, num_frames))
    num_rows = max(num_proposals, num_objects)  # ids above num_proposals are the empty padding proposals
    j = np.empty((num_rows, num_objects, num_frames))
    f = np.empty((num_rows, num_objects, num_frames))
    chunk = max(1, min(num_frames, _CHUNK_PIXELS // ((num_rows + num_objects) * height * width)))
    # Mask buffers filled in place chunk after chunk: fresh large arrays per chunk would cost more in page
    # faults than the comparisons themselves.
    preds = np.empty((num_rows, chunk, height, width), bool)
    gts = np.empty((num_objects, chunk, height, width), bool)
    for start in range(0, num_frames, chunk):
        frames = slice(start, min(start + chunk, num_frames))
        size = frames.stop - start
        for i in range(num_rows):  # rows above num_proposals stay empty: the padding proposals
            np.equal(res_labels[frames], i + 1, out=preds[i, :size])
        for i in range(num_objects):
            np.equal(gt_labels[frames], i + 1, out=gts[i, :size])
        j[:, :, frames], f[:, :, frames] = pairwise_jf(preds[:, :size], gts[:, :size])
    score = (np.mean(j, axis=2) + np.mean(f, axis=2)) / 2  # [K', N]
    rows, cols = linear_sum_assignment(-score)
    by_object = np.argsort(cols)
    return j[rows, cols][by_object], f[rows, cols][by_object]


def _video_frames(annotations: Path, video: str) -> list[Path]:
    frames = sorted((annotations / video).glob("*.png"))
    if not frames:
        raise FileNotFoundError(f"no annotation PNGs for video {video} in {annotations / video}; check davis_root "
                                f"and that DAVIS-2017-Unsupervised-trainval-480p.zip is unpacked there")
    return frames


def _read_results(results_dir: Path, video: str, frame_names: list[str], shape: tuple[int, int]) -> np.ndarray:
    folder = results_dir / video
    if not folder.is_dir():
        raise FileNotFoundError(f"no results for video {video}: expected the folder {folder} with one indexed PNG "
                                f"per annotated frame")
    labels = []
    for name in frame_names:
        path = folder / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"missing result frame {path} (video {video}, frame {name}): every annotated "
                                    f"frame needs a result PNG")
        frame = read_label_png(path)
        if frame.shape != shape:
            raise UserInputError(f"{path}: result is {frame.shape[1]}x{frame.shape[0]}, the annotation is "
                                 f"{shape[1]}x{shape[0]}; write results at the annotation's resolution")
        labels.append(frame)
    return np.stack(labels)


def evaluate_davis_unsupervised(davis_root: str | Path, results_dir: str | Path, split: str = "val") -> dict:
    """Evaluate a results folder on a DAVIS-2017 split with the unsupervised protocol (module docstring).

    Reads only ``<davis_root>/ImageSets/2017/<split>.txt``, ``<davis_root>/Annotations_unsupervised/480p/`` and
    ``<results_dir>/<video>/<frame>.png``.

    Returns:
        ``{"J", "F", "JF", "J_recall", "J_decay", "F_recall", "F_decay"}`` floats in [0, 1] (decays in [-1, 1])
        and ``"per_object": {"<video>_<object id>": {"J": mean, "F": mean}}``.
    """
    davis_root, results_dir = Path(davis_root), Path(results_dir)
    imageset = davis_root / "ImageSets" / "2017" / f"{split}.txt"
    if not imageset.is_file():
        raise FileNotFoundError(f"split list {imageset} not found; davis_root must be the DAVIS folder that holds "
                                f"ImageSets/ and Annotations_unsupervised/")
    annotations = davis_root / "Annotations_unsupervised" / "480p"
    videos = [line.strip() for line in imageset.read_text().splitlines() if line.strip()]
    scores = {}
    for video in videos:
        frame_paths = _video_frames(annotations, video)
        gt_frames = [read_label_png(path) for path in frame_paths]
        shapes = {frame.shape for frame in gt_frames}
        if len(shapes) != 1:
            raise UserInputError(f"annotations of video {video} ({annotations / video}) have different sizes: {shapes}")
        gt_labels = np.stack(gt_frames)
        res_labels = _read_results(results_dir, video, [path.stem for path in frame_paths], gt_labels.shape[1:])
        j_rows, f_rows = match_video(gt_labels, res_labels, video)
        for obj, (j_row, f_row) in enumerate(zip(j_rows, f_rows), start=1):
            scores[f"{video}_{obj}"] = (j_row, f_row)
    if not scores:
        raise UserInputError(f"no objects to evaluate: the first annotation frame of every video listed in {imageset} "
                             f"is empty")
    return summarize(scores)


def summarize(scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """``{"<video>_<object id>": (J [T], F [T])}`` matched per-frame scores -> the global numbers.

    Returns the dictionary described in :func:`evaluate_davis_unsupervised`.
    """
    if not scores:
        raise ValueError("summarize needs the scores of at least one object")
    j_stats = np.array([db_statistics(j_row) for j_row, _ in scores.values()])  # [objects, (mean, recall, decay)]
    f_stats = np.array([db_statistics(f_row) for _, f_row in scores.values()])
    per_object = {name: {"J": float(j[0]), "F": float(f[0])} for name, j, f in zip(scores, j_stats, f_stats)}
    j_mean, f_mean = float(np.mean(j_stats[:, 0])), float(np.mean(f_stats[:, 0]))
    return {
        "J": j_mean, "F": f_mean, "JF": (j_mean + f_mean) / 2,
        "J_recall": float(np.mean(j_stats[:, 1])), "J_decay": float(np.mean(j_stats[:, 2])),
        "F_recall": float(np.mean(f_stats[:, 1])), "F_decay": float(np.mean(f_stats[:, 2])),
        "per_object": per_object,
    }


# ------------------------------------------------------------------------------------ Ref-DAVIS17's annotators

NUM_ANNOTATORS = 4  # Ref-DAVIS17's four expression sets: annot1-first, annot1-full, annot2-first, annot2-full


def annotator_folders(results_dir: Path) -> list[Path] | None:
    """The ``anno_0..anno_3`` folders under ``results_dir``; None when it holds none (a single annotator)."""
    folders = [Path(results_dir) / f"anno_{annotator}" for annotator in range(NUM_ANNOTATORS)]
    present = [folder.is_dir() for folder in folders]
    if not any(present):
        return None
    if not all(present):
        missing = [str(folder) for folder, here in zip(folders, present) if not here]
        raise FileNotFoundError(f"{results_dir} holds some annotator folders but not {missing}; run the inference "
                                f"for all four, or pass one anno_<a> folder as --results_dir")
    return folders


def evaluate_annotators(davis_root: Path, folders: list[Path], split: str = "val") -> dict:
    """Evaluate each annotator's folder; ``{"J", "F", "JF"}`` means over them and ``per_annotator``."""
    per_annotator = {}
    for folder in folders:
        result = evaluate_davis_unsupervised(davis_root, folder, split=split)
        per_annotator[folder.name] = {key: result[key] for key in ("J", "F", "JF", "per_object")}
    means = {key: float(np.mean([result[key] for result in per_annotator.values()])) for key in ("J", "F", "JF")}
    return {**means, "per_annotator": per_annotator}
