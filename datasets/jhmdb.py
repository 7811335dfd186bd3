"""JHMDB-Sentences (evaluation only, with a model trained on A2D-Sentences): the A2D protocol on JHMDB.

Layout::

    <root>/Rename_Images/<action>/<video>/<frame:05d>.png      1-based frame numbers
    <root>/puppet_mask/<action>/<video>/puppet_mask.mat         "part_mask" [H, W, T]
    <root>/jhmdb_annotation.txt                                 csv with header: video_id,query
    <root>/jhmdb_sentences_samples_metadata.json                optional, MTTR's chosen frames

Three annotated frames per video are scored: MTTR's choice when its metadata json is present (entries
``[video, frame_path, mask_path, total_frames, query]``; only the video id, the frame number in the
file name, the frame count and the query are used), else three evenly spaced frames. Each sample is a
window of ``num_frames`` frames centred on the scored frame, with the same target extras as A2D
(``annotated_index``, ``image_id`` ``v_<video>_f_<frame>``).
"""
import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torch
from torch.utils.data import Dataset

from datasets.a2d import centred_window
from datasets.errors import DatasetFormatError
from datasets.ytvos import frame_size, load_image, make_target

METADATA_FILE = "jhmdb_sentences_samples_metadata.json"
FRAMES_PER_VIDEO = 3


@dataclass(frozen=True)
class JHMDBSample:
    video: str
    action: str
    frame: int  # 1-based scored frame
    total_frames: int  # frames that have both an image and a mask
    query: str


def evenly_spaced_frames(total_frames: int, count: int = FRAMES_PER_VIDEO) -> list[int]:
    """``count`` distinct 1-based frame numbers at the centres of ``count`` equal parts of the video."""
    if total_frames <= count:
        return list(range(1, total_frames + 1))
    return [(2 * k + 1) * total_frames // (2 * count) + 1 for k in range(count)]


def read_queries(path: Path) -> dict[str, str]:
    """``{video: query}`` from ``jhmdb_annotation.txt``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected the JHMDB-Sentences annotation file there")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"video_id", "query"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetFormatError(f"{path}: header lacks the column(s) {sorted(missing)}")
        return {row["video_id"].strip(): row["query"] for row in reader}


def video_actions(root: Path) -> dict[str, str]:
    """``{video: action}`` from the folders ``Rename_Images/<action>/<video>``."""
    image_root = root / "Rename_Images"
    if not image_root.is_dir():
        raise FileNotFoundError(f"{image_root} not found: expected the JHMDB frames there")
    actions = [folder for folder in image_root.iterdir() if folder.is_dir()]
    return {video.name: action.name for action in actions for video in action.iterdir() if video.is_dir()}


class JHMDBSentences(Dataset):
    """JHMDB-Sentences ``(frames [T, 3, H, W], target)`` with the scored frame at ``num_frames // 2``."""

    def __init__(self, root: str | Path, num_frames: int, transforms):
        self.root, self.num_frames, self.transforms = Path(root), num_frames, transforms
        self.actions = video_actions(self.root)
        queries = read_queries(self.root / "jhmdb_annotation.txt")
        for video in queries:
            if video not in self.actions:
                raise FileNotFoundError(f"video {video!r} has a sentence but no folder Rename_Images/*/{video}")
        metadata = self.root / METADATA_FILE
        self.samples = self._samples_from_metadata(metadata) if metadata.is_file() else self._even_samples(queries)

    def _mask_path(self, video: str) -> Path:
        return self.root / "puppet_mask" / self.actions[video] / video / "puppet_mask.mat"

    def _total_frames(self, video: str) -> int:
        """Frames with both an image and a mask (the last frames of some videos have no mask)."""
        path = self._mask_path(video)
        if not path.is_file():
            raise FileNotFoundError(f"video {video!r}: {path} is missing")
        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(str(path))}
        if "part_mask" not in shapes or len(shapes["part_mask"]) != 3:
            raise DatasetFormatError(f"{path}: expected a 'part_mask' array of shape [H, W, T]")
        image_dir = self.root / "Rename_Images" / self.actions[video] / video
        num_images = sum(1 for name in image_dir.iterdir() if name.suffix == ".png")
        return min(num_images, shapes["part_mask"][2])

    def _even_samples(self, queries: dict[str, str]) -> list[JHMDBSample]:
        samples = []
        for video, query in sorted(queries.items()):
            total = self._total_frames(video)
            for frame in evenly_spaced_frames(total):
                samples.append(JHMDBSample(video, self.actions[video], frame, total, query))
        return samples

    def _samples_from_metadata(self, path: Path) -> list[JHMDBSample]:
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
            samples = [
                JHMDBSample(video, self.actions[video], int(Path(frame_path).stem), int(total), query)
                for video, frame_path, _, total, query in entries
            ]
        except (json.JSONDecodeError, ValueError, TypeError) as error:
            raise DatasetFormatError(
                f"{path}: expected MTTR's list of [video, frame_path, mask_path, total_frames, query] ({error})"
            ) from error
        except KeyError as error:
            raise FileNotFoundError(
                f"{path} names video {error.args[0]!r}, which has no Rename_Images folder"
            ) from error
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        sample = self.samples[index]
        numbers = centred_window(sample.frame, self.num_frames, 1, sample.total_frames)
        image_dir = self.root / "Rename_Images" / sample.action / sample.video
        names = [f"{n:05d}" for n in numbers]
        frames = [load_image(image_dir / f"{name}.png", sample.video, name, "RGB") for name in names]
        height, width = frame_size(frames, sample.video, names)
        mask_path = self._mask_path(sample.video)
        part_mask = scipy.io.loadmat(str(mask_path))["part_mask"]  # [H, W, T]
        if part_mask.shape[:2] != (height, width):
            raise DatasetFormatError(
                f"video {sample.video!r}: {mask_path} masks are {part_mask.shape[1]}x{part_mask.shape[0]} (WxH) "
                f"but the frames are {width}x{height}"
            )
        annotated_index = self.num_frames // 2
        masks = np.zeros((self.num_frames, height, width), dtype=bool)
        masks[annotated_index] = part_mask[:, :, sample.frame - 1] != 0
        target = make_target(
            masks, sample.query, (height, width),
            frames=names, video=sample.video, exp_id="0", kind="",
            annotated_index=annotated_index, image_id=f"v_{sample.video}_f_{sample.frame}",
        )
        return self.transforms(frames, target, random.Random(index))
