"""Ref-YouTube-VOS layout: reading and validating it, training clips and whole-video evaluation items.

Layout (also used by the converted Ref-DAVIS17 and by RefShapes)::

    <root>/meta_expressions/<split>/meta_expressions.json
        {"videos": {video: {"expressions": {exp_id: {"exp": str, "obj_id": str[, "kind": str]}},
                            "frames": [frame names]}}}
    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/Annotations/<video>/<frame>.png     palette PNG, pixel value = object id

Frame names are always taken from the json (Ref-YTVOS frames are sparse: 00000, 00005, ...).
"""
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.errors import DatasetFormatError
from datasets.item_rng import EpochSeeded
from util.box_ops import masks_to_boxes
from util.errors import UserInputError


def meta_expressions_path(root: str | Path, split: str) -> Path:
    return Path(root) / "meta_expressions" / split / "meta_expressions.json"


def read_meta_json(path: Path, hint: str = "re-download or regenerate it") -> dict:
    """The ``videos`` object of a ``meta_expressions.json``; DatasetFormatError naming ``path`` when it is not
    valid json or has no ``videos`` object (``hint`` says what to do about it)."""
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"{path} is not valid json ({error}); {hint}") from error
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise DatasetFormatError(f"{path}: expected a top-level object with a 'videos' object")
    return meta["videos"]


def normalize_caption(text: str) -> str:
    """Lower-case and collapse whitespace, as every RVOS loader does before tokenising."""
    return " ".join(text.lower().split())


def check_video_entry(path: Path, video: str, entry) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("expressions"), dict):
        raise DatasetFormatError(f"{path}: video {video!r} has no 'expressions' object")
    frames = entry.get("frames")
    if not isinstance(frames, list) or not frames or not all(isinstance(f, str) for f in frames):
        raise DatasetFormatError(f"{path}: video {video!r} needs a non-empty 'frames' list of frame names")
    for exp_id, expression in entry["expressions"].items():
        if not isinstance(expression, dict) or not isinstance(expression.get("exp"), str):
            raise DatasetFormatError(f"{path}: video {video!r}, expression {exp_id!r} has no 'exp' string")
        if not expression["exp"].strip():
            raise DatasetFormatError(f"{path}: video {video!r}, expression {exp_id!r} is empty "
                                     f"({expression['exp']!r}); every referring expression needs at least one word")


def read_meta_expressions(root: str | Path, split: str) -> dict:
    """Read and validate ``meta_expressions/<split>/meta_expressions.json`` against the frames on disk.

    Returns ``{video: {"expressions": {...}, "frames": [...]}}`` (the json's ``"videos"`` object).
    Raises ``FileNotFoundError`` (missing json, video folder or frame) or ``DatasetFormatError``
    (unreadable json, missing keys), naming the file, video and frame.
    """
    path = meta_expressions_path(root, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected the Ref-YouTube-VOS layout under {root} "
            f"(meta_expressions/{split}/meta_expressions.json); check data_root and the split name"
        )
    return read_checked_videos(path, Path(root) / split / "JPEGImages")


def read_checked_videos(path: Path, image_root: Path) -> dict:
    """The ``videos`` of the meta_expressions json ``path``, each entry checked (expressions with an ``exp``, a
    non-empty ``frames`` list) and every listed frame found as ``image_root/<video>/<frame>.jpg``."""
    videos = read_meta_json(path)
    for video, entry in videos.items():
        check_video_entry(path, video, entry)
        folder = image_root / video
        if not folder.is_dir():
            raise FileNotFoundError(f"video {video!r} is listed in {path} but its folder {folder} is missing")
        on_disk = set(os.listdir(folder))
        for frame in entry["frames"]:
            if f"{frame}.jpg" not in on_disk:
                raise FileNotFoundError(
                    f"frame {frame!r} of video {video!r} is listed in {path} but {folder / (frame + '.jpg')} "
                    "is missing"
                )
    return videos


def load_image(path: Path, video: str, frame: str, mode: str) -> Image.Image:
    """Open and fully decode one image; a missing or corrupt file raises an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"video {video!r}, frame {frame!r}: {path} is missing")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode else image.copy()
    except OSError as error:
        raise DatasetFormatError(
            f"video {video!r}, frame {frame!r}: {path} is truncated or corrupt ({error}); re-extract it"
        ) from error


def load_frames(root: str | Path, split: str, video: str, frame_names: list[str]) -> list[Image.Image]:
    """The RGB frames ``<root>/<split>/JPEGImages/<video>/<frame>.jpg`` in the given order."""
    folder = Path(root) / split / "JPEGImages" / video
    return [load_image(folder / f"{frame}.jpg", video, frame, "RGB") for frame in frame_names]


def load_object_masks(
    root: str | Path, split: str, video: str, frame_names: list[str], obj_id: int, size: tuple[int, int]
) -> np.ndarray:
    """Binary masks ``[T, H, W]`` of object ``obj_id`` from the palette PNGs of the given frames.

    ``size`` is the ``(H, W)`` of the video frames; an annotation of another size is an error.
    """
    folder = Path(root) / split / "Annotations" / video
    masks = []
    for frame in frame_names:
        path = folder / f"{frame}.png"
        annotation = load_image(path, video, frame, mode="")
        if annotation.mode not in ("P", "L"):
            raise DatasetFormatError(
                f"video {video!r}, frame {frame!r}: {path} is a {annotation.mode!r} image; expected a palette "
                "('P') PNG whose pixel values are object ids"
            )
        ids = np.asarray(annotation)
        if ids.shape != tuple(size):
            raise DatasetFormatError(
                f"video {video!r}, frame {frame!r}: annotation {path} is {ids.shape[1]}x{ids.shape[0]} (WxH) "
                f"but the frame is {size[1]}x{size[0]}"
            )
        masks.append(ids == obj_id)
    return np.stack(masks)


def frame_size(frames: list[Image.Image], video: str, frame_names: list[str]) -> tuple[int, int]:
    """The common ``(H, W)`` of a clip's frames; frames of different sizes are an error."""
    width, height = frames[0].size
    for frame, name in zip(frames, frame_names):
        if frame.size != (width, height):
            raise DatasetFormatError(
                f"video {video!r}: frame {name!r} is {frame.size[0]}x{frame.size[1]} but frame "
                f"{frame_names[0]!r} is {width}x{height}; all frames of a video must have one size"
            )
    return height, width


def first_frame_sizes(data_root: str | Path, split: str, videos: dict) -> dict[str, tuple[int, int]]:
    """``{video: (width, height)}`` of each video's first listed frame (header read only)."""
    sizes = {}
    for video, entry in videos.items():
        path = Path(data_root) / split / "JPEGImages" / video / f"{entry['frames'][0]}.jpg"
        try:
            with Image.open(path) as image:
                sizes[video] = image.size
        except OSError as error:
            raise DatasetFormatError(f"video {video!r}, frame {entry['frames'][0]!r}: {path} is not a readable "
                                     f"image ({error}); re-extract it") from error
    return sizes


PER_FRAME_KEYS = ("masks", "boxes", "valid")  # the target entries with one row per frame


def make_target(masks: np.ndarray | None, caption: str, size: tuple[int, int], **info) -> dict:
    """The untransformed target of a clip: bool masks ``[T, H, W]``, xyxy pixel boxes, valid flags (left out when
    ``masks`` is None: a split without ground truth)."""
    target = {
        "caption": normalize_caption(caption),
        "orig_size": torch.tensor(size, dtype=torch.long),
        "size": torch.tensor(size, dtype=torch.long),
        **info,
    }
    if masks is not None:
        masks = torch.from_numpy(masks)
        target.update(masks=masks, boxes=masks_to_boxes(masks),  # [T, 4] xyxy pixels, zero where absent
                      valid=masks.flatten(1).any(dim=1).long())  # [T]
    return target


def sample_clip_indices(
    num_video_frames: int, anchor: int, num_frames: int, max_skip: int, rng: random.Random
) -> list[int]:
    """Sorted indices of a training clip of ``num_frames`` frames around ``anchor``.

    The anchor, one local frame before and one after it (offsets drawn in ``1..max_skip``, clamped to the
    video), then global frames drawn from the rest of the video. Frames repeat only when the video has
    fewer than ``num_frames`` frames.
    """
    picked = [anchor]
    for direction in (-1, 1):
        local = min(max(anchor + direction * rng.randint(1, max_skip), 0), num_video_frames - 1)
        if len(picked) < num_frames and local not in picked:
            picked.append(local)
    outside = [i for i in range(num_video_frames) if i < min(picked) or i > max(picked)]
    inside = [i for i in range(min(picked), max(picked) + 1) if i not in picked]
    for pool in (outside, inside):
        needed = num_frames - len(picked)
        picked += rng.sample(pool, min(needed, len(pool)))
    picked += rng.choices(range(num_video_frames), k=num_frames - len(picked))
    return sorted(picked)


class YTVOSClips(EpochSeeded, Dataset):
    """Training clips ``(frames [T, 3, H, W], target)`` from a Ref-YouTube-VOS-layout split.

    One item per (video, expression, anchor) with anchors every ``num_frames`` frames. A clip is reversed
    with probability ``reverse_prob``. Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``. Another layout
    with the same sampling (``datasets/mevis.py``) overrides ``read_videos``, ``target_masks`` and
    ``visible_frames``.

    With ``sentences_per_clip`` K > 1, an item is ``(frames, [target_1, ..., target_K])``: one item per
    (video, anchor), and K expressions of the video (distinct while it has that many, else repeated) on the same
    frames under the same augmentation, so that every step contrasts sentences that see the same pixels
    (``util.nested_tensor.collate_clips`` lays them out as the model's K captions per clip). The clip's frames
    are sampled for the first of them; the transforms run once for all K (a random crop keeps at least one of the
    K objects in view).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        num_frames: int,
        max_skip: int,
        reverse_prob: float,
        transforms,
        seed: int = 0,
        sentences_per_clip: int = 1,
    ):
        if num_frames < 1 or max_skip < 1 or not 0.0 <= reverse_prob <= 1.0 or sentences_per_clip < 1:
            raise UserInputError(
                f"need num_frames >= 1, max_skip >= 1, 0 <= reverse_prob <= 1 and sentences_per_clip >= 1; got "
                f"{num_frames}, {max_skip}, {reverse_prob}, {sentences_per_clip}"
            )
        self.sentences_per_clip = sentences_per_clip
        self.root, self.split = Path(root), split
        self.num_frames, self.max_skip, self.reverse_prob = num_frames, max_skip, reverse_prob
        self.transforms, self.seed = transforms, seed
        self.videos = self.read_videos()
        self.items = [
            (video, exp_id, anchor)
            for video, entry in sorted(self.videos.items())
            for exp_id in (sorted(entry["expressions"], key=exp_id_order) if sentences_per_clip == 1 else [None])
            for anchor in range(0, len(entry["frames"]), num_frames)
        ]

    def read_videos(self) -> dict:
        """The split's ``{video: entry}`` (``read_meta_expressions``), checked to have ground truth."""
        videos = read_meta_expressions(self.root, self.split)
        require_ground_truth(self.root, self.split, videos)
        return videos

    def target_masks(self, video: str, exp_id: str, indices: list[int], size: tuple[int, int]) -> np.ndarray:
        """Bool masks ``[T, H, W]`` of the expression's target in the video frames ``indices``."""
        names = self.videos[video]["frames"]
        obj_id = int(self.videos[video]["expressions"][exp_id]["obj_id"])
        return load_object_masks(self.root, self.split, video, [names[i] for i in indices], obj_id, size)

    def visible_frames(self, video: str, exp_id: str, size: tuple[int, int]) -> list[int]:
        """Indices of the video frames that show the target; an error when there are none (a layout that allows
        an absent target returns [] instead, and its clips keep valid 0 in every frame)."""
        masks = self.target_masks(video, exp_id, range(len(self.videos[video]["frames"])), size)
        visible = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1)).tolist()
        if not visible:
            obj_id = int(self.videos[video]["expressions"][exp_id]["obj_id"])
            raise absent_object_error(self.root, self.split, video, obj_id)
        return visible

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict | list[dict]]:
        rng = self.rng_for(index)
        video, exp_id, anchor = self.items[index]
        if exp_id is not None:
            frames, targets = self._clip(video, [exp_id], anchor, rng)
            return frames, targets[0]
        exp_ids = sorted(self.videos[video]["expressions"], key=exp_id_order)
        chosen = rng.sample(exp_ids, min(self.sentences_per_clip, len(exp_ids)))
        chosen += rng.choices(exp_ids, k=self.sentences_per_clip - len(chosen))
        return self._clip(video, chosen, anchor, rng)

    def _clip(self, video: str, exp_ids: list[str], anchor: int,
              rng: random.Random) -> tuple[torch.Tensor, list[dict]]:
        """The clip around ``anchor`` sampled for ``exp_ids[0]`` and the target of every expression on it."""
        entry = self.videos[video]
        exp_id = exp_ids[0]
        all_names = entry["frames"]
        indices = sample_clip_indices(len(all_names), anchor, self.num_frames, self.max_skip, rng)
        names = [all_names[i] for i in indices]
        frames = load_frames(self.root, self.split, video, names)
        size = frame_size(frames, video, names)
        masks = self.target_masks(video, exp_id, indices, size)
        if not masks.any():
            # The target is absent from the whole clip: re-anchor on a frame where it is visible (if any).
            visible = self.visible_frames(video, exp_id, size)
            if visible:
                anchor = rng.choice(visible)
                indices = sample_clip_indices(len(all_names), anchor, self.num_frames, self.max_skip, rng)
                names = [all_names[i] for i in indices]
                frames = load_frames(self.root, self.split, video, names)
                masks = self.target_masks(video, exp_id, indices, size)
        reverse = rng.random() < self.reverse_prob
        if reverse:
            frames, names = frames[::-1], names[::-1]
        per_expression = [masks if other == exp_id else self.target_masks(video, other, indices, size)
                          for other in exp_ids]
        expressions = [entry["expressions"][other] for other in exp_ids]
        # One pass of the transforms for all K expressions: their masks go through as one target's frames
        # ([K*T, H, W]: the same geometry for all), their captions as its lines (normalised captions hold no newline).
        merged = make_target(np.concatenate([m[::-1] if reverse else m for m in per_expression]), "", size,
                             frames=names, video=video)
        merged["caption"] = "\n".join(normalize_caption(expression["exp"]) for expression in expressions)
        clip, merged = self.transforms(frames, merged, rng)
        return clip, split_merged_target(merged, exp_ids, expressions, len(indices))


def split_merged_target(merged: dict, exp_ids: list[str], expressions: list[dict], num_frames: int) -> list[dict]:
    """The K targets of a transformed merged target (see ``YTVOSClips._clip``): each expression's caption line and
    its ``num_frames`` rows of every per-frame entry, with the entries common to all (size, frames, video)."""
    captions = merged["caption"].split("\n")
    per_frame = {key: merged[key].split(num_frames) for key in PER_FRAME_KEYS if key in merged}
    return [{**merged, "caption": caption, "exp_id": exp_id, "kind": expression.get("kind", ""),
             **{key: chunks[k] for key, chunks in per_frame.items()}}
            for k, (exp_id, expression, caption) in enumerate(zip(exp_ids, expressions, captions))]


class YTVOSVideos(Dataset):
    """Whole videos with ground truth, one item ``(frames [T, 3, H, W], target)`` per expression.

    For local evaluation on a split that has ``Annotations`` and ``obj_id`` (RefShapes valid, converted
    Ref-DAVIS17). All frames of the json, in order, with the deterministic test transform. Another layout
    (``datasets/mevis.py``) overrides ``read_videos`` and ``video_masks``.
    """

    def __init__(self, root: str | Path, split: str, transforms):
        self.root, self.split, self.transforms = Path(root), split, transforms
        self.videos = self.read_videos()
        self.items = [
            (video, exp_id)
            for video, entry in sorted(self.videos.items())
            for exp_id in sorted(entry["expressions"], key=exp_id_order)
        ]

    def read_videos(self) -> dict:
        """The split's ``{video: entry}`` (``read_meta_expressions``), checked to have ground truth."""
        videos = read_meta_expressions(self.root, self.split)
        require_ground_truth(self.root, self.split, videos)
        return videos

    def video_masks(self, video: str, exp_id: str, size: tuple[int, int]) -> np.ndarray | None:
        """Bool masks ``[T, H, W]`` of the expression's target in every frame of the video (None: a split without
        ground truth); an error when the target appears in none."""
        obj_id = int(self.videos[video]["expressions"][exp_id]["obj_id"])
        masks = load_object_masks(self.root, self.split, video, self.videos[video]["frames"], obj_id, size)
        if not masks.any():
            raise absent_object_error(self.root, self.split, video, obj_id)
        return masks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        video, exp_id = self.items[index]
        entry = self.videos[video]
        expression = entry["expressions"][exp_id]
        names = entry["frames"]
        frames = load_frames(self.root, self.split, video, names)
        size = frame_size(frames, video, names)
        target = make_target(
            self.video_masks(video, exp_id, size), expression["exp"], size,
            frames=list(names), video=video, exp_id=exp_id, kind=expression.get("kind", ""),
        )
        return self.transforms(frames, target, random.Random(index))


def absent_object_error(root: Path, split: str, video: str, obj_id: int) -> DatasetFormatError:
    """The error for an ``obj_id`` that no annotation of ``video`` contains."""
    return DatasetFormatError(
        f"video {video!r}: object id {obj_id} (from {meta_expressions_path(root, split)}) appears in none of the "
        f"annotations under {root / split / 'Annotations' / video}; the json's obj_id and the palette indices of "
        "the PNGs disagree"
    )


def exp_id_order(exp_id: str) -> tuple[int, str]:
    """Numeric exp ids in numeric order ("2" before "10"), others after them."""
    return (int(exp_id), "") if exp_id.isdigit() else (1 << 62, exp_id)


def require_ground_truth(root: Path, split: str, videos: dict) -> None:
    """Check that a split can give masks: an ``Annotations`` folder and an integer ``obj_id`` per expression."""
    path = meta_expressions_path(root, split)
    annotations = root / split / "Annotations"
    if not annotations.is_dir():
        raise FileNotFoundError(
            f"{annotations} not found: split {split!r} has no ground-truth masks (Ref-YouTube-VOS 'valid' has "
            "none: use inference_ytvos.py and the submission server for it)"
        )
    for video, entry in videos.items():
        for exp_id, expression in entry["expressions"].items():
            obj_id = expression.get("obj_id")
            if not (isinstance(obj_id, str | int) and str(obj_id).isdigit()):
                raise DatasetFormatError(
                    f"{path}: video {video!r}, expression {exp_id!r} needs an integer 'obj_id' "
                    f"(the palette index of its object), got {obj_id!r}"
                )
