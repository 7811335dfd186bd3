"""A2D-Sentences: windows of ``num_frames`` frames centred on an annotated frame of an A2D clip.

Layout (the A2D release plus Gavrilyuk et al.'s sentences)::

    <root>/Release/videoset.csv                  no header; first column the video id, last the split
                                                 (0 train, 1 test)
    <root>/Release/clips320H/<video>.mp4
    <root>/text_annotations/a2d_annotation.txt   csv with header: video_id,instance_id,query
    <root>/text_annotations/a2d_missed_videos.txt   one video id a line (dropped)
    <root>/text_annotations/a2d_annotation_with_instances/<video>/<frame:05d>.h5
        "instance" [N] ids, "reMask" [N, W, H] (stored transposed; [W, H] when N = 1),
        "reBBox" [4, N] x1y1x2y2; frame numbers are 1-based

A sample is (sentence, video, annotated frame, instance), kept when the instance is annotated in that
frame. The target has the mask on the annotated frame only (the others are ``valid`` 0 with empty
masks), ``annotated_index`` (its position in the window, ``num_frames // 2``) and ``image_id``
``v_<video>_f_<frame>_i_<instance>`` (the id of the COCO-format ground truth).
"""
import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import av
import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.errors import DatasetFormatError
from datasets.item_rng import EpochSeeded
from datasets.ytvos import make_target
from util.errors import UserInputError

SUBSETS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class A2DSample:
    sentence_index: int  # row of a2d_annotation.txt (0-based, header excluded)
    query: str
    video: str
    frame: int  # 1-based annotated frame
    instance: int


def centred_window(center: int, num_frames: int, first: int, last: int) -> list[int]:
    """``num_frames`` consecutive frame numbers with ``center`` at position ``num_frames // 2``,
    clamped to ``[first, last]`` (edge frames repeat)."""
    start = center - num_frames // 2
    return [min(max(start + offset, first), last) for offset in range(num_frames)]


def read_videoset(path: Path) -> dict[str, int]:
    """``{video: subset}`` from ``Release/videoset.csv`` (no header; the last column is the subset)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected the A2D release under {path.parents[1]}")
    subsets = {}
    with open(path, newline="") as f:
        for line_number, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) < 2 or row[-1].strip() not in ("0", "1"):
                raise DatasetFormatError(f"{path}:{line_number}: expected `video,...,subset` with subset 0/1")
            subsets[row[0].strip()] = int(row[-1])
    return subsets


def read_sentences(path: Path) -> list[tuple[int, str, int, str]]:
    """``(row, video, instance, query)`` of ``a2d_annotation.txt``; rows whose instance id is not an integer
    (one known mistake, "1 (copy)") are skipped with a warning."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: unzip the A2D-Sentences text annotations into {path.parent}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"video_id", "instance_id", "query"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetFormatError(f"{path}: header lacks the column(s) {sorted(missing)}")
        sentences = []
        for row_index, row in enumerate(reader):
            if not row["instance_id"].strip().isdigit():
                warnings.warn(f"{path}: skipping row {row_index + 2} with instance id {row['instance_id']!r}")
                continue
            sentences.append((row_index, row["video_id"].strip(), int(row["instance_id"]), row["query"]))
    return sentences


def read_h5_instances(path: Path) -> list[int]:
    """The instance ids annotated in one frame's h5 file."""
    try:
        with h5py.File(path, "r") as f:
            return [int(i) for i in np.asarray(f["instance"]).reshape(-1)]
    except (OSError, KeyError) as error:
        raise DatasetFormatError(f"{path}: unreadable A2D annotation ({error})") from error


def read_instance_mask(path: Path, instance: int) -> np.ndarray:
    """The ``[H, W]`` bool mask of ``instance`` in an annotation h5 file."""
    try:
        with h5py.File(path, "r") as f:
            instances = [int(i) for i in np.asarray(f["instance"]).reshape(-1)]
            masks = np.asarray(f["reMask"])
    except (OSError, KeyError) as error:
        raise DatasetFormatError(f"{path}: unreadable A2D annotation ({error})") from error
    if masks.ndim == 2:  # a single instance is stored without its leading axis
        masks = masks[None]
    if masks.shape[0] != len(instances) or instance not in instances:
        raise DatasetFormatError(
            f"{path}: 'reMask' holds {masks.shape[0]} masks for instances {instances}; need instance {instance}"
        )
    return masks[instances.index(instance)].T != 0  # stored [W, H]


def decode_frames(path: Path, frame_numbers: list[int]) -> tuple[list[Image.Image], list[int]]:
    """The RGB frames with the given 1-based numbers of an mp4, and the numbers actually used: numbers
    past the end of the video are clamped to its last frame."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    wanted = set(frame_numbers)
    decoded: dict[int, Image.Image] = {}
    count = 0
    try:
        with av.open(str(path)) as container:
            for count, frame in enumerate(container.decode(video=0), start=1):
                if count in wanted:
                    decoded[count] = frame.to_image()
                if count >= max(wanted):
                    break
    except av.FFmpegError as error:
        raise DatasetFormatError(f"{path}: cannot decode the video ({error})") from error
    if min(wanted) > count:
        raise DatasetFormatError(f"{path} has {count} frames; frame {min(wanted)} was asked for")
    numbers = [min(number, count) for number in frame_numbers]
    return [decoded[number] for number in numbers], numbers


class A2DSentences(EpochSeeded, Dataset):
    """A2D-Sentences ``(frames [T, 3, H, W], target)`` for ``split`` "train" or "test"."""

    def __init__(self, root: str | Path, split: str, num_frames: int, transforms, seed: int = 0):
        if split not in SUBSETS:
            raise UserInputError(f"A2D-Sentences split must be one of {sorted(SUBSETS)}, got {split!r}")
        self.root, self.num_frames, self.transforms, self.seed = Path(root), num_frames, transforms, seed
        self.video_dir = self.root / "Release" / "clips320H"
        self.mask_dir = self.root / "text_annotations" / "a2d_annotation_with_instances"
        self.samples = self._build_samples(SUBSETS[split])

    def _build_samples(self, subset: int) -> list[A2DSample]:
        text_dir = self.root / "text_annotations"
        videoset = read_videoset(self.root / "Release" / "videoset.csv")
        missed_path = text_dir / "a2d_missed_videos.txt"
        if not missed_path.is_file():
            raise FileNotFoundError(f"{missed_path} not found: it ships with the A2D-Sentences text annotations")
        missed = set(missed_path.read_text().split())
        frames_by_video: dict[str, list[tuple[int, list[int]]]] = {}
        samples = []
        for row, video, instance, query in read_sentences(text_dir / "a2d_annotation.txt"):
            if video in missed or videoset.get(video) != subset:
                continue
            if video not in frames_by_video:
                frames_by_video[video] = self._annotated_frames(video)
            for frame, instances in frames_by_video[video]:
                if instance in instances:
                    samples.append(A2DSample(row, query, video, frame, instance))
        return samples

    def _annotated_frames(self, video: str) -> list[tuple[int, list[int]]]:
        folder = self.mask_dir / video
        if not folder.is_dir():
            raise FileNotFoundError(f"video {video!r} has sentences but no mask folder {folder}")
        names = sorted(name for name in os.listdir(folder) if name.endswith(".h5"))
        return [(int(name[: -len(".h5")]), read_h5_instances(folder / name)) for name in names]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        sample = self.samples[index]
        # The upper clamp happens in decode_frames, which learns the video length while decoding.
        numbers = centred_window(sample.frame, self.num_frames, 1, 1 << 30)
        video_path = self.video_dir / f"{sample.video}.mp4"
        frames, numbers = decode_frames(video_path, numbers)
        annotated_index = self.num_frames // 2
        if numbers[annotated_index] != sample.frame:
            raise DatasetFormatError(
                f"video {sample.video!r}: frame {sample.frame} is annotated but {video_path} ends at frame "
                f"{numbers[annotated_index]}"
            )
        mask_path = self.mask_dir / sample.video / f"{sample.frame:05d}.h5"
        mask = read_instance_mask(mask_path, sample.instance)
        width, height = frames[0].size
        if mask.shape != (height, width):
            raise DatasetFormatError(
                f"video {sample.video!r}, frame {sample.frame}: mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} "
                f"(WxH) but the video frames are {width}x{height}"
            )
        masks = np.zeros((self.num_frames, height, width), dtype=bool)
        masks[annotated_index] = mask
        target = make_target(
            masks, sample.query, (height, width),
            frames=[f"{n:05d}" for n in numbers], video=sample.video, exp_id=str(sample.sentence_index), kind="",
            annotated_index=annotated_index, image_id=f"v_{sample.video}_f_{sample.frame}_i_{sample.instance}",
        )
        return self.transforms(frames, target, self.rng_for(index))
