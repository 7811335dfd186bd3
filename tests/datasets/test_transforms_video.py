"""Clip transforms: flip, resize, crop, colour, normalisation and the train/test pipelines."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.transforms_video import (
    Check,
    Normalize,
    PhotometricDistort,
    RandomHorizontalFlip,
    RandomResize,
    RandomSelect,
    RandomSizeCrop,
    ToTensor,
    crop,
    hflip,
    make_test_transforms,
    make_train_transforms,
    resized_hw,
    swap_left_right,
)
from datasets.ytvos import make_target
from util.box_ops import masks_to_boxes


def make_clip(num_frames: int = 2, height: int = 20, width: int = 30, boxes=((3, 4, 10, 12), (15, 6, 25, 16))):
    """Random-noise frames and a target whose object occupies ``boxes[t]`` (xyxy, exclusive ends)."""
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(num_frames)]
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for t, box in enumerate(boxes[:num_frames]):
        if box is not None:
            x0, y0, x1, y1 = box
            masks[t, y0:y1, x0:x1] = True
    target = make_target(masks, "", (height, width))
    target["caption"] = "the dog left of the Right cat"  # mixed case: the flip must keep it
    return frames, target


@pytest.mark.parametrize(
    "caption,expected",
    [
        ("the left dog", "the right dog"),
        ("Left of the RIGHT one, right?", "Right of the LEFT one, left?"),
        ("leftover bright wrights", "leftover bright wrights"),
        ("his left-hand side", "his right-hand side"),
        ("the leftmost car, not the Rightmost", "the rightmost car, not the Leftmost"),
    ],
)
def test_swap_left_right(caption, expected):
    assert swap_left_right(caption) == expected
    assert swap_left_right(expected) == caption


def test_hflip_mirrors_frames_masks_boxes_and_caption():
    frames, target = make_clip()
    flipped_frames, flipped = hflip(frames, target)
    for before, after in zip(frames, flipped_frames):
        assert np.array_equal(np.asarray(after), np.asarray(before)[:, ::-1])
    assert torch.equal(flipped["masks"], target["masks"].flip(-1))
    # x -> W - x with exclusive right edges: [3, 10) -> [20, 27), [15, 25) -> [5, 15)
    assert flipped["boxes"].tolist() == [[20, 4, 27, 12], [5, 6, 15, 16]]
    assert flipped["caption"] == "the dog right of the Left cat"
    twice_frames, twice = hflip(flipped_frames, flipped)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(twice_frames, frames))
    for key in ("masks", "boxes", "valid", "size"):
        assert torch.equal(twice[key], target[key])
    assert twice["caption"] == target["caption"]


def test_random_horizontal_flip_probability():
    frames, target = make_clip()
    _, kept = RandomHorizontalFlip(p=0.0)(frames, target, random.Random(0))
    _, flipped = RandomHorizontalFlip(p=1.0)(frames, target, random.Random(0))
    assert torch.equal(kept["masks"], target["masks"])
    assert torch.equal(flipped["masks"], target["masks"].flip(-1))
    decisions = [RandomHorizontalFlip()(frames, target, random.Random(s))[1]["caption"] != target["caption"]
                 for s in range(200)]
    assert 60 < sum(decisions) < 140


@pytest.mark.parametrize(
    "hw,size,max_size,expected",
    [
        ((480, 640), 360, 640, (360, 480)),
        ((480, 1280), 360, 640, (240, 640)),  # the long side would be 960: the short side gives way
        ((640, 480), 360, 640, (480, 360)),
        ((720, 1280), 360, None, (360, 640)),
        ((100, 100), 128, 128, (128, 128)),
    ],
)
def test_resized_hw(hw, size, max_size, expected):
    assert resized_hw(*hw, size, max_size) == expected


def test_random_resize_keeps_masks_and_boxes_consistent():
    frames, target = make_clip()
    out_frames, out = RandomResize([40], max_size=100)(frames, target, random.Random(0))
    assert out_frames[0].size == (60, 40) and out["size"].tolist() == [40, 60]
    assert out["masks"].shape == (2, 40, 60) and out["masks"].dtype == torch.bool
    assert torch.equal(out["boxes"], masks_to_boxes(out["masks"]))
    assert out["boxes"].tolist() == [[6, 8, 20, 24], [30, 12, 50, 32]]  # exact 2x of the source boxes
    assert torch.equal(out["orig_size"], target["orig_size"])


def test_crop_and_check_mark_frames_that_lose_the_object():
    frames, target = make_clip()
    out_frames, out = crop(frames, target, top=2, left=0, height=12, width=12)
    out_frames, out = Check()(out_frames, out, random.Random(0))
    assert out_frames[0].size == (12, 12) and out["size"].tolist() == [12, 12]
    assert out["valid"].tolist() == [1, 0]  # frame 1's object lies at x >= 15
    assert out["boxes"].tolist() == [[3, 2, 10, 10], [0, 0, 0, 0]]
    assert not out["masks"][1].any()


def test_random_size_crop_bounds_and_keeps_the_object():
    frames, target = make_clip(height=60, width=80, boxes=((70, 50, 78, 58), None))
    for seed in range(30):
        out_frames, out = RandomSizeCrop(20, 40)(frames, target, random.Random(seed))
        width, height = out_frames[0].size
        if (width, height) != (80, 60):  # not the uncropped fallback
            assert 20 <= width <= 40 and 20 <= height <= 40
        assert out["masks"][0].any() and torch.equal(out["boxes"], masks_to_boxes(out["masks"]))
        assert out["valid"].tolist() == [1, 0]


def test_photometric_distort_is_the_same_for_every_frame():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    frames = [image, image.copy(), image.copy()]
    changed = 0
    for seed in range(10):
        out, _ = PhotometricDistort()(frames, {}, random.Random(seed))
        arrays = [np.asarray(frame) for frame in out]
        assert all(np.array_equal(arrays[0], a) for a in arrays[1:])
        again, _ = PhotometricDistort()(frames, {}, random.Random(seed))
        assert np.array_equal(np.asarray(again[0]), arrays[0])
        changed += not np.array_equal(arrays[0], np.asarray(image))
    assert changed >= 5


def test_to_tensor_and_normalize():
    frames, target = make_clip()
    video, out = ToTensor()(frames, target, random.Random(0))
    assert video.shape == (2, 3, 20, 30) and out["masks"].dtype == torch.float32
    assert torch.allclose(video[0, :, 0, 0] * 255, torch.tensor(np.asarray(frames[0])[0, 0], dtype=torch.float32))
    normalised, out = Normalize()(video, out, random.Random(0))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(normalised[1, :, 5, 7], (video[1, :, 5, 7] - mean) / std)
    # xyxy [3, 4, 10, 12] in a 30x20 frame -> cxcywh [6.5/30, 8/20, 7/30, 8/20]
    assert torch.allclose(out["boxes"][0], torch.tensor([6.5 / 30, 8 / 20, 7 / 30, 8 / 20]))


def test_normalize_keeps_zero_boxes_of_absent_frames():
    frames, target = make_clip(boxes=((3, 4, 10, 12), None))
    video, out = ToTensor()(frames, target, random.Random(0))
    _, out = Normalize()(video, out, random.Random(0))
    assert out["boxes"][1].tolist() == [0, 0, 0, 0] and out["valid"].tolist() == [1, 0]


def test_single_scale_train_transforms_have_no_crop_branch():
    transforms = make_train_transforms({"data": {"train_scales": [16], "max_size": 16}})
    assert not any(isinstance(t, RandomSelect) for t in transforms.transforms)
    frames, target = make_clip()
    for seed in range(5):
        video, out = transforms(frames, target, random.Random(seed))
        assert video.shape == (2, 3, 11, 16)  # 20x30 -> long side capped at 16, short round(10.7)
        assert out["size"].tolist() == [11, 16] and out["masks"].shape == (2, 11, 16)
        assert torch.all((out["boxes"] >= 0) & (out["boxes"] <= 1))


def test_multi_scale_train_transforms_follow_the_paper():
    cfg = {"data": {"train_scales": [288, 320, 352], "max_size": 400}}
    transforms = make_train_transforms(cfg)
    assert any(isinstance(t, RandomSelect) for t in transforms.transforms)
    frames, target = make_clip(height=120, width=160, boxes=((10, 10, 150, 110), (20, 20, 100, 100)))
    shapes = set()
    for seed in range(6):
        video, out = transforms(frames, target, random.Random(seed))
        height, width = video.shape[-2:]
        assert min(height, width) in (288, 320, 352) or max(height, width) >= 399  # capped (rounding)
        assert max(height, width) <= 400 and out["masks"].shape[-2:] == (height, width)
        shapes.add((height, width))
        again, _ = transforms(frames, target, random.Random(seed))
        assert torch.equal(video, again)
    assert len(shapes) > 1


def test_test_transforms_are_deterministic_and_accept_targets_without_masks():
    transforms = make_test_transforms(10, 40)
    frames, target = make_clip()
    video, out = transforms(frames, target, random.Random(0))
    again, _ = transforms(frames, target, random.Random(1))
    assert video.shape == (2, 3, 10, 15) and torch.equal(video, again)
    video, out = transforms(frames, {"caption": "x"}, random.Random(0))
    assert video.shape == (2, 3, 10, 15) and out["size"].tolist() == [10, 15] and "masks" not in out
