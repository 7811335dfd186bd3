"""Small MeViS-layout trees written by the tests and the MeViS benchmark, and irregular masks to fill them.

``write_split(root, split, videos)`` writes ``<root>/<split>/meta_expressions.json``, ``mask_dict.json`` (one
anno id per object; ``null`` where its mask is empty) and, unless ``frames=False``, JPEG frames. ``videos`` maps a
video name to ``{"objects": {anno_id: bool [T, H, W]}, "expressions": {exp_id: (sentence, [anno ids])}}``; frames
are named 00000, 00001, ... as in MeViS.
"""
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from util.mask_rle import mask_to_rle
from util.submission import mask_png_bytes


def frame_names(num_frames: int) -> list[str]:
    return [f"{index:05d}" for index in range(num_frames)]


def write_split(root: Path, split: str, videos: dict, frames: bool = True, masks: bool = True) -> Path:
    """Write one split (see the module docstring); returns ``root``."""
    split_dir = root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    meta, mask_dict = {}, {}
    for video, spec in videos.items():
        num_frames, height, width = next(iter(spec["objects"].values())).shape
        names = frame_names(num_frames)
        meta[video] = {"expressions": {exp_id: {"exp": sentence, "obj_id": list(range(len(anno_ids))),
                                                "anno_id": list(anno_ids)}
                                       for exp_id, (sentence, anno_ids) in spec["expressions"].items()},
                       "frames": names}
        for anno_id, object_masks in spec["objects"].items():
            mask_dict[str(anno_id)] = [mask_to_rle(mask) if mask.any() else None for mask in object_masks]
        if frames:
            folder = split_dir / "JPEGImages" / video
            folder.mkdir(parents=True, exist_ok=True)
            for index, name in enumerate(names):
                shade = np.full((height, width, 3), 40 + 10 * index, dtype=np.uint8)
                Image.fromarray(shade).save(folder / f"{name}.jpg", quality=95)
    (split_dir / "meta_expressions.json").write_text(json.dumps({"videos": meta}))
    if masks:
        (split_dir / "mask_dict.json").write_text(json.dumps(mask_dict))
    return root


def write_predictions(pred_dir: Path, video: str, exp_id: str, masks: np.ndarray,
                      names: list[str] | None = None) -> None:
    """``pred_dir/<video>/<exp_id>/<frame>.png``, 0/255, for bool masks ``[T, H, W]``; frames named ``names``
    (default 00000, 00001, ...)."""
    folder = pred_dir / video / exp_id
    folder.mkdir(parents=True)
    for name, mask in zip(names or frame_names(len(masks)), masks):
        (folder / f"{name}.png").write_bytes(mask_png_bytes(mask))


def blob_masks(rng: np.random.Generator, num_frames: int, height: int, width: int, coverage: float,
               empty_frames: int = 0) -> np.ndarray:
    """bool ``[T, H, W]``: an irregular blob (several parts, holes, ragged edges) drifting across the frames,
    ``coverage`` the fraction of the frame it covers; ``empty_frames`` random frames are left empty."""
    coarse = rng.random((height // 6 + 2, width // 6 + 2)).astype(np.float32)
    field = cv2.GaussianBlur(cv2.resize(coarse, (width + num_frames * 3, height), interpolation=cv2.INTER_CUBIC),
                             (0, 0), 1.5)
    threshold = np.quantile(field, 1 - coverage)
    masks = np.stack([field[:, 3 * t:3 * t + width] > threshold for t in range(num_frames)])
    masks[rng.choice(num_frames, size=empty_frames, replace=False)] = False
    return masks


def perturbed(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """A plausible prediction of bool ``[T, H, W]`` masks: per frame dilated, eroded, shifted, speckled, emptied
    or given a spurious blob."""
    out = []
    kernel = np.ones((3, 3), np.uint8)
    for mask in masks.astype(np.uint8):
        choice = rng.integers(6)
        if choice == 0:
            mask = cv2.dilate(mask, kernel, iterations=int(rng.integers(1, 4)))
        elif choice == 1:
            mask = cv2.erode(mask, kernel, iterations=int(rng.integers(1, 3)))
        elif choice == 2:
            mask = np.roll(mask, tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
        elif choice == 3:
            mask = mask ^ (rng.random(mask.shape) < 0.02)
        elif choice == 4:
            mask = np.zeros_like(mask)
        else:
            mask = mask | blob_masks(rng, 1, *mask.shape, 0.05)[0]
        out.append(mask.astype(bool))
    return np.stack(out)
