"""One video at a time: frames decoded lazily, segmented clip by clip (``Predictor.stream``), encoded as mask
PNGs and written as one atomic folder. ``inference_ytvos.py``, ``inference_mevis.py`` and ``evaluate.py`` (the
Ref-YouTube-VOS-layout and MeViS evaluations of ``main.py --eval``) write their prediction trees with
``write_video_masks``, or under ``torchrun`` with ``write_video_masks_sharded``."""
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from datasets import load_frames
from inference.sharding import folder_holds, sharded_run
from inference.writers import mask_png_bytes
from util.atomic_write import write_folder


def lazy_frames(data_root: Path, split: str, video: str, frame_names: list[str]) -> Iterator[tuple[str, Image.Image]]:
    """``(frame name, RGB frame)`` of ``<data_root>/<split>/JPEGImages/<video>``, each decoded when it is read."""
    return ((name, load_frames(data_root, split, video, [name])[0]) for name in frame_names)


def segment_video_files(predictor, data_root: Path, split: str, video: str, entry: dict, clip_len: int | None = None,
                        threshold: float | None = None) -> dict[str, bytes]:
    """``{"<exp_id>/<frame>.png": PNG bytes}`` of every expression of one json ``entry``, its frames decoded,
    segmented and encoded clip by clip (``Predictor.stream``), so that only the video's PNGs are ever all held.

    clip_len: frames a forward pass (None: the whole video); threshold: default the config's inference.threshold.
    """
    exp_ids = list(entry["expressions"])
    sentences = [entry["expressions"][exp_id]["exp"] for exp_id in exp_ids]
    threshold = predictor.threshold if threshold is None else threshold
    files = {}
    frames = lazy_frames(data_root, split, video, entry["frames"])
    for frame, _, probabilities in predictor.stream(frames, sentences, clip_len):  # probabilities [K, H, W]
        files.update({f"{exp_id}/{frame}.png": mask_png_bytes(mask)
                      for exp_id, mask in zip(exp_ids, probabilities > threshold)})
    return files


def write_video_masks(predictor, data_root: Path, split: str, videos: dict, out: Path, clip_len: int | None,
                      threshold: float | None = None, progress: bool = True) -> None:
    """Segment every expression of ``videos`` (a meta_expressions ``videos`` dict) into
    ``out/<video>/<exp_id>/<frame>.png``, one atomic folder per video (``util.atomic_write.write_folder``: an
    interrupted run never leaves a half-written video), in sorted order; ``progress``: show a progress bar."""
    for video, entry in tqdm(sorted(videos.items()), desc="videos", unit="video", disable=not progress):
        write_video(predictor, data_root, split, video, entry, out, clip_len, threshold)


def write_video(predictor, data_root: Path, split: str, video: str, entry: dict, out: Path,
                clip_len: int | None = None, threshold: float | None = None) -> None:
    """Segment one video's expressions into the atomic folder ``out/<video>/<exp_id>/<frame>.png``."""
    write_folder(Path(out) / video, segment_video_files(predictor, data_root, split, video, entry, clip_len,
                                                        threshold))


def video_files(expected) -> dict[str, set[str]]:
    """``{video: {"<exp_id>/<frame>.png", ...}}``: the files each finished video folder holds, from a submission's
    ``inference.writers.expected_masks``."""
    files: dict[str, set[str]] = {}
    for item in expected:
        files.setdefault(item.video, set()).add(f"{item.exp_id}/{item.frame}.png")
    return files


def write_video_masks_sharded(predictor, data_root: Path, split: str, videos: dict, expected, out: Path,
                              output_dir: Path, record: dict, clip_len: int | None, threshold: float | None = None,
                              skip_existing: bool = False) -> bool:
    """``write_video_masks`` over this process's share of ``videos`` (``inference.sharding.sharded_run``, which
    keeps finished videos when resuming): a video is finished when ``out/<video>`` holds exactly its masks of
    ``expected`` (``inference.writers.expected_masks``). True on rank 0 once every rank's videos are on disk."""
    files = video_files(expected)
    segment = partial(write_video, predictor, data_root, split, out=out, clip_len=clip_len, threshold=threshold)
    return sharded_run(videos, segment, lambda video, _: folder_holds(out / video, files.get(video, set())), output_dir, record,
                       skip_existing, out)
