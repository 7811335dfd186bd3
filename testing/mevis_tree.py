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

from inference.writers import mask_png_bytes
from util.mask_rle import mask_to_rle


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


def scattered_masks(rng: np.random.Generator, num_frames: int, height: int, width: int, coverage: float,
                    empty_frames: int = 0) -> np.ndarray:
    """bool ``[T, H, W]``: thresholded smooth noise drifting across the frames, many parts with holes and ragged
    edges spread over the whole frame, ``coverage`` the fraction covered; ``empty_frames`` random frames empty."""
    coarse = rng.random((height // 6 + 2, width // 6 + 2)).astype(np.float32)
    field = cv2.GaussianBlur(cv2.resize(coarse, (width + num_frames * 3, height), interpolation=cv2.INTER_CUBIC),
                             (0, 0), 1.5)
    threshold = np.quantile(field, 1 - coverage)
    masks = np.stack([field[:, 3 * t:3 * t + width] > threshold for t in range(num_frames)])
    masks[rng.choice(num_frames, size=empty_frames, replace=False)] = False
    return masks


def object_masks(rng: np.random.Generator, num_frames: int, height: int, width: int, coverage: float,
                 empty_frames: int = 0) -> np.ndarray:
    """bool ``[T, H, W]``: one object as a video shows it, an irregular blob (ragged edge, sometimes a hole or a
    detached bit) of about ``coverage`` of the frame, moving in a straight line and possibly leaving the frame;
    ``empty_frames`` random frames are left empty as well."""
    radius = max(2.0, float(np.sqrt(coverage * height * width / np.pi)))
    side = int(3 * radius) | 1
    coarse = rng.random((side // 4 + 2, side // 4 + 2)).astype(np.float32)
    noise = cv2.GaussianBlur(cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC), (0, 0), 1.0)
    offsets = np.arange(side) - side // 2
    distance = np.hypot(offsets[:, None], offsets[None, :]) / radius
    blob = (noise - 0.5) * 1.2 + 1 - distance ** 2 > 0  # [side, side]
    start = rng.uniform([0, 0], [height, width])
    velocity = rng.uniform(-0.02, 0.02, size=2) * np.array([height, width])
    masks = np.zeros((num_frames, height, width), bool)
    padded = np.zeros((num_frames, height + 2 * side, width + 2 * side), bool)
    for t in range(num_frames):
        y, x = (start + velocity * t).astype(int) + side - side // 2
        if 0 <= y <= height + side and 0 <= x <= width + side:
            padded[t, y:y + side, x:x + side] |= blob
    masks[:] = padded[:, side:side + height, side:side + width]
    masks[rng.choice(num_frames, size=empty_frames, replace=False)] = False
    return masks


def perturbed(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """A plausible prediction of bool ``[T, H, W]`` masks: per frame dilated, eroded, shifted, speckled near the
    object, emptied, or with a spurious object added."""
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
            near = cv2.dilate(mask, kernel, iterations=5).astype(bool)
            mask = mask ^ (near & (rng.random(mask.shape) < 0.05))
        elif choice == 4:
            mask = np.zeros_like(mask)
        else:
            mask = mask | object_masks(rng, 1, *mask.shape, 0.01)[0]
        out.append(mask.astype(bool))
    return np.stack(out)
