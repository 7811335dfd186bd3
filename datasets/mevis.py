"""MeViS (Ding et al., ICCV 2023; v2, TPAMI 2025): training clips and whole-video items.

Layout::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg             split: train, valid_u, valid
    <root>/<split>/meta_expressions.json
        {"videos": {video: {"expressions": {exp_id: {"exp": str, "obj_id": [int, ...], "anno_id": [int, ...]}},
                            "frames": [frame names]}}}
    <root>/{train,valid_u}/mask_dict.json                     {anno_id: [COCO RLE or null, one per frame]}

An expression may refer to several objects: its target is the **union** of the masks of its ``anno_id`` list, one
mask per frame, with the box of the union and ``valid`` 0 on frames where none of them is visible. ``valid`` has no
``mask_dict.json`` (the benchmark's server scores it), and its json needs only ``exp`` and ``frames``. The frames
of a video are its json ``frames`` in order; entry ``i`` of an anno id in ``mask_dict.json`` is frame ``i``.
"""
from pathlib import Path

import numpy as np

from datasets.errors import DatasetFormatError
from datasets.mevis_masks import MaskStore, load_mask_store
from datasets.ytvos import YTVOSClips, YTVOSVideos, first_frame_sizes, read_checked_videos
from util.errors import UserInputError

SPLITS = ("train", "valid_u", "valid")
SPLITS_WITH_MASKS = ("train", "valid_u")
# (split, number of expressions) of each release; the two are scored differently and must not be mixed.
RELEASE_COUNTS = {
    ("train", 23051): "v1", ("valid_u", 793): "v1", ("valid", 2236): "v1",
    ("train", 27502): "v2", ("valid_u", 907): "v2", ("valid", 2523): "v2",
}


def meta_path(root: str | Path, split: str) -> Path:
    return Path(root) / split / "meta_expressions.json"


def mask_dict_path(root: str | Path, split: str) -> Path:
    return Path(root) / split / "mask_dict.json"


def read_mevis_meta(root: str | Path, split: str) -> dict:
    """``{video: {"expressions", "frames"}}`` of ``<root>/<split>/meta_expressions.json``, checked against the
    frames on disk (``datasets.ytvos.read_checked_videos``)."""
    if split not in SPLITS:
        raise UserInputError(f"unknown MeViS split {split!r}; choose one of {', '.join(SPLITS)}")
    path = meta_path(root, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected the MeViS layout under {root} "
                                f"(<split>/meta_expressions.json, <split>/JPEGImages/); check data_root")
    return read_checked_videos(path, Path(root) / split / "JPEGImages")


def expression_annos(path: Path, videos: dict) -> dict[str, dict[str, list[str]]]:
    """video -> exp_id -> the expression's ``anno_id`` list as strings (the keys of ``mask_dict.json``)."""
    annos = {}
    for video, entry in videos.items():
        annos[video] = {}
        for exp_id, expression in entry["expressions"].items():
            anno_ids = expression.get("anno_id")
            if not (isinstance(anno_ids, list) and all(
                    (isinstance(a, int) and not isinstance(a, bool)) or (isinstance(a, str) and a.isdigit())
                    for a in anno_ids)):
                raise DatasetFormatError(f"{path}: video {video!r}, expression {exp_id!r} needs an 'anno_id' list "
                                         f"of integer ids (keys of mask_dict.json), got {anno_ids!r}")
            annos[video][exp_id] = [str(a) for a in anno_ids]
    return annos


def load_split_masks(root: str | Path, split: str, videos: dict) -> tuple[dict, MaskStore]:
    """``(video -> exp_id -> anno ids, MaskStore)`` of a split with ground truth, every RLE checked to have the
    size of its video's frames (read from the first frame's header)."""
    if split not in SPLITS_WITH_MASKS:
        raise UserInputError(f"MeViS {split!r} has no masks (mask_dict.json); its masks are scored by the server. "
                             f"Use {' or '.join(SPLITS_WITH_MASKS)}")
    annos = expression_annos(meta_path(root, split), videos)
    sizes = {video: (height, width) for video, (width, height) in first_frame_sizes(root, split, videos).items()}
    frames = {video: entry["frames"] for video, entry in videos.items()}
    return annos, load_mask_store(mask_dict_path(root, split), annos, frames, sizes)


def count_expressions(videos: dict) -> int:
    return sum(len(entry["expressions"]) for entry in videos.values())


def mevis_version(split: str, num_expressions: int) -> str:
    """"v1" or "v2" when ``split`` has that release's number of expressions, else "unknown"."""
    return RELEASE_COUNTS.get((split, num_expressions), "unknown")


class MeViSClips(YTVOSClips):
    """Training clips ``(frames [T, 3, H, W], target)`` of a MeViS split, sampled as ``YTVOSClips`` samples them.

    The target masks are the union of each expression's ``anno_id`` masks. A clip in which none of them is visible
    is re-anchored on a frame where one is; when none is visible in the whole video, the clip keeps ``valid`` 0 in
    every frame (empty masks, zero boxes).
    """

    def read_videos(self) -> dict:
        """The split's videos; also reads ``mask_dict.json`` once into ``self.masks`` and each expression's anno
        ids into ``self.annos``."""
        videos = read_mevis_meta(self.root, self.split)
        self.annos, self.masks = load_split_masks(self.root, self.split, videos)
        return videos

    def target_masks(self, video: str, exp_id: str, indices: list[int], size: tuple[int, int]) -> np.ndarray:
        return self.masks.union(video, exp_id, self.annos[video][exp_id], indices, size)

    def visible_frames(self, video: str, exp_id: str, size: tuple[int, int]) -> list[int]:
        return np.flatnonzero(self.masks.visible(video, self.annos[video][exp_id])).tolist()


class MeViSVideos(YTVOSVideos):
    """Whole videos of ``valid_u`` (or ``train``) with the union masks, or of ``valid`` without masks: one item
    ``(frames [T, 3, H, W], target)`` per expression, all frames of the json in order, test transform."""

    def read_videos(self) -> dict:
        """The split's videos; with ``mask_dict.json`` (not in ``valid``) read into ``self.masks`` and each
        expression's anno ids into ``self.annos``, else both None."""
        videos = read_mevis_meta(self.root, self.split)
        self.annos, self.masks = (load_split_masks(self.root, self.split, videos) if self.split in SPLITS_WITH_MASKS
                                  else (None, None))
        return videos

    def video_masks(self, video: str, exp_id: str, size: tuple[int, int]) -> np.ndarray | None:
        if self.masks is None:
            return None
        frames = range(len(self.videos[video]["frames"]))
        return self.masks.union(video, exp_id, self.annos[video][exp_id], frames, size)
