"""Clip transforms: the same geometry and colour change for every frame of a clip.

Every transform is called as ``transform(frames, target, rng) -> (frames, target)`` where ``frames`` is a
list of T ``PIL.Image`` (a ``[T, 3, H, W]`` tensor after ``ToTensor``) and ``rng`` is a
``random.Random`` owned by the sample, so augmentations are reproducible. The target entries that a
transform uses, when present:

- ``"masks"``: ``[T, H, W]`` bool tensor of the referred object;
- ``"boxes"``: ``[T, 4]`` float, **xyxy pixels** until ``Normalize`` turns them into normalised cxcywh;
- ``"valid"``: ``[T]`` long, 1 where the object is present;
- ``"caption"``: str; ``"size"``: ``[2]`` long ``(H, W)``.

Geometric transforms move the masks and recompute the boxes from them, so boxes always equal the
mask extents. Targets without masks (inference) pass through with only the frames changed.
"""
import random
import re

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.nn import functional as F

from util.box_ops import box_xyxy_to_cxcywh, masks_to_boxes
from util.imagenet import IMAGENET_MEAN, IMAGENET_STD

# The paper's second augmentation branch (ReferFormer's make_coco_transforms): resize, crop, resize again.
CROP_BRANCH_SCALES = (400, 500, 600)
CROP_BRANCH_CROP = (384, 600)


def _set_masks(target: dict, masks: torch.Tensor, size: tuple[int, int]) -> dict:
    """A copy of ``target`` with new masks ``[T, H, W]``, boxes recomputed from them, and ``size``."""
    target = dict(target)
    target["size"] = torch.tensor(size, dtype=torch.long)
    if "masks" in target:
        target["masks"] = masks
        target["boxes"] = masks_to_boxes(masks)
    return target


class Compose:
    def __init__(self, transforms: list):
        self.transforms = transforms

    def __call__(self, frames, target: dict, rng: random.Random):
        for transform in self.transforms:
            frames, target = transform(frames, target, rng)
        return frames, target

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class RandomSelect:
    """Apply ``first`` with probability ``p``, else ``second``."""

    def __init__(self, first, second, p: float = 0.5):
        self.first, self.second, self.p = first, second, p

    def __call__(self, frames, target: dict, rng: random.Random):
        if rng.random() < self.p:
            return self.first(frames, target, rng)
        return self.second(frames, target, rng)


# Horizontal flips mirror these words; "leftmost"/"rightmost" too, since they are common in referring text.
_MIRRORED_WORDS = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_MIRRORED_PATTERN = re.compile(r"\b(" + "|".join(_MIRRORED_WORDS) + r")\b", flags=re.IGNORECASE)


def swap_left_right(caption: str) -> str:
    """Swap the whole words "left"/"right" (and "leftmost"/"rightmost") both ways, keeping their case."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = _MIRRORED_WORDS[word.lower()]
        if word.isupper():
            return other.upper()
        if word[0].isupper():
            return other.capitalize()
        return other

    return _MIRRORED_PATTERN.sub(swap, caption)


class RandomHorizontalFlip:
    """Mirror frames, masks and boxes with probability ``p``; swap "left"/"right" in the caption."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, frames, target: dict, rng: random.Random):
        if rng.random() >= self.p:
            return frames, target
        return hflip(frames, target)


def hflip(frames: list[Image.Image], target: dict) -> tuple[list[Image.Image], dict]:
    """Mirror a clip and its target left-right (deterministic half of ``RandomHorizontalFlip``)."""
    frames = [frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for frame in frames]
    width, height = frames[0].size
    masks = target["masks"].flip(-1) if "masks" in target else None
    target = _set_masks(target, masks, (height, width))
    if "caption" in target:
        target["caption"] = swap_left_right(target["caption"])
    return frames, target


def resized_hw(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    """``(H', W')`` with the short side ``size``, lowered so that the long side stays <= ``max_size``."""
    short, long = min(height, width), max(height, width)
    if max_size is not None and long * size > max_size * short:
        size = int(round(max_size * short / long))
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize(frames: list[Image.Image], target: dict, size: int, max_size: int | None):
    """Resize a clip so its short side is ``size`` (long side <= ``max_size``); masks by nearest."""
    width, height = frames[0].size
    new_h, new_w = resized_hw(height, width, size, max_size)
    if (new_h, new_w) == (height, width):
        return frames, _set_masks(target, target.get("masks"), (height, width))
    frames = [frame.resize((new_w, new_h), Image.Resampling.BILINEAR) for frame in frames]
    masks = target.get("masks")
    if masks is not None:
        masks = F.interpolate(masks[None].to(torch.uint8), size=(new_h, new_w), mode="nearest")[0].bool()
    return frames, _set_masks(target, masks, (new_h, new_w))


class RandomResize:
    """Resize the short side to a size drawn from ``sizes``, the long side capped at ``max_size``."""

    def __init__(self, sizes: list[int] | tuple[int, ...], max_size: int | None = None):
        self.sizes = list(sizes)
        self.max_size = max_size

    def __call__(self, frames, target: dict, rng: random.Random):
        return resize(frames, target, rng.choice(self.sizes), self.max_size)

    def __repr__(self) -> str:
        return f"RandomResize(sizes={self.sizes}, max_size={self.max_size})"


def crop(frames: list[Image.Image], target: dict, top: int, left: int, height: int, width: int):
    """Crop every frame to the ``height`` x ``width`` window at ``(top, left)``."""
    frames = [frame.crop((left, top, left + width, top + height)) for frame in frames]
    masks = target.get("masks")
    if masks is not None:
        masks = masks[:, top : top + height, left : left + width]
    return frames, _set_masks(target, masks, (height, width))


class RandomSizeCrop:
    """Crop a random window whose sides are drawn in ``[min_size, max_size]`` (capped by the frame).

    A window that would lose the object in every frame where it was visible is redrawn (up to
    ``max_tries`` times); if none keeps it, the clip is left uncropped, so a training clip never
    loses its object to the crop.
    """

    def __init__(self, min_size: int, max_size: int, max_tries: int = 10):
        self.min_size, self.max_size, self.max_tries = min_size, max_size, max_tries

    def __call__(self, frames, target: dict, rng: random.Random):
        width, height = frames[0].size
        masks = target.get("masks")
        was_visible = masks is not None and bool(masks.any())
        for _ in range(self.max_tries):
            crop_w = rng.randint(min(self.min_size, width, self.max_size), min(width, self.max_size))
            crop_h = rng.randint(min(self.min_size, height, self.max_size), min(height, self.max_size))
            top, left = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
            window = masks[:, top : top + crop_h, left : left + crop_w] if masks is not None else None
            if not was_visible or bool(window.any()):
                return crop(frames, target, top, left, crop_h, crop_w)
        return frames, target

    def __repr__(self) -> str:
        return f"RandomSizeCrop({self.min_size}, {self.max_size})"


class PhotometricDistort:
    """Random brightness, contrast, saturation and hue, each applied with probability 0.5.

    The parameters are drawn once per clip, so all frames change alike (a per-frame change would look
    like motion to the temporal model). Ranges follow the SSD-style distortion ReferFormer uses.
    """

    def __init__(
        self,
        brightness: float = 32 / 255,
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue: float = 18 / 360,
    ):
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def draw(self, rng: random.Random) -> list[tuple]:
        """The ``(function, factor)`` steps for one clip."""
        steps = []
        if rng.random() < 0.5:
            steps.append((TF.adjust_brightness, 1.0 + rng.uniform(-self.brightness, self.brightness)))
        if rng.random() < 0.5:
            steps.append((TF.adjust_contrast, rng.uniform(*self.contrast)))
        if rng.random() < 0.5:
            steps.append((TF.adjust_saturation, rng.uniform(*self.saturation)))
        if rng.random() < 0.5:
            steps.append((TF.adjust_hue, rng.uniform(-self.hue, self.hue)))
        return steps

    def __call__(self, frames, target: dict, rng: random.Random):
        steps = self.draw(rng)
        for function, factor in steps:
            frames = [function(frame, factor) for frame in frames]
        return frames, target


class Check:
    """Mark frames whose mask became empty (crop, downscale) as absent: ``valid`` 0 and zero box."""

    def __call__(self, frames, target: dict, rng: random.Random):
        if "masks" not in target:
            return frames, target
        target = dict(target)
        present = target["masks"].flatten(1).any(dim=1)  # [T]
        target["valid"] = target["valid"] * present.long()
        target["boxes"] = target["boxes"] * target["valid"][:, None].to(target["boxes"].dtype)
        return frames, target


class ToTensor:
    """Frames -> float tensor ``[T, 3, H, W]`` in [0, 1]; masks -> float ``[T, H, W]`` in {0, 1}."""

    def __call__(self, frames, target: dict, rng: random.Random):
        frames = [frame if frame.mode == "RGB" else frame.convert("RGB") for frame in frames]
        video = torch.stack([TF.pil_to_tensor(frame) for frame in frames]).float() / 255.0
        if "masks" in target:
            target = dict(target)
            target["masks"] = target["masks"].float()
        return video, target


class Normalize:
    """ImageNet-normalise the frames; boxes xyxy pixels -> cxcywh normalised by the frame W, H."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        self.mean = torch.tensor(mean)[:, None, None]
        self.std = torch.tensor(std)[:, None, None]

    def __call__(self, video: torch.Tensor, target: dict, rng: random.Random):
        video = (video - self.mean) / self.std  # [T, 3, H, W]
        if "boxes" in target:
            target = dict(target)
            height, width = video.shape[-2:]
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            target["boxes"] = box_xyxy_to_cxcywh(target["boxes"]) / scale
        return video, target


def make_train_transforms(cfg: dict) -> Compose:
    """The training augmentation of the paper, scales and max size from ``cfg["data"]``.

    Flip, then one of two branches at random: resize to one of ``train_scales`` (long side <=
    ``max_size``), or resize to 400/500/600, crop 384-600 and resize to ``train_scales``; then
    photometric distortion and normalisation. With a single train scale (small synthetic data) the
    crop branch is left out.
    """
    scales, max_size = cfg["data"]["train_scales"], cfg["data"]["max_size"]
    final_resize = RandomResize(scales, max_size)
    if len(scales) == 1:
        geometry = final_resize
    else:
        crop_branch = Compose([RandomResize(CROP_BRANCH_SCALES), RandomSizeCrop(*CROP_BRANCH_CROP), final_resize])
        geometry = RandomSelect(final_resize, crop_branch)
    return Compose([RandomHorizontalFlip(), geometry, PhotometricDistort(), Check(), ToTensor(), Normalize()])


def make_test_transforms(test_size: int, max_size: int | None) -> Compose:
    """Short side ``test_size`` (long side <= ``max_size``), tensor, normalisation; no randomness."""
    return Compose([RandomResize([test_size], max_size), ToTensor(), Normalize()])
