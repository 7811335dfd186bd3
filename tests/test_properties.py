"""Property tests (hypothesis): box conversions, masks -> boxes, flips, mask <-> RLE and the J / F metrics."""
import random

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from datasets.transforms_video import RandomHorizontalFlip
from metrics.jf import boundary_f, jaccard
from util.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, masks_to_boxes
from util.mask_rle import mask_to_rle, rle_to_mask

FEW = settings(max_examples=40, deadline=None)
coordinates = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
masks_2d = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(lambda hw: arrays(bool, hw))
mask_pairs = st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: st.tuples(arrays(bool, shape), arrays(bool, shape)))


@FEW
@given(st.lists(st.tuples(coordinates, coordinates, coordinates, coordinates), min_size=1, max_size=6))
def test_cxcywh_xyxy_round_trip(values):
    boxes = torch.tensor(values, dtype=torch.float64)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes, rtol=0, atol=1e-9)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes, rtol=0, atol=1e-9)


def reference_box(mask: np.ndarray) -> list[float]:
    """Tight xyxy box with exclusive x1/y1, zero for an empty mask (numpy, loop-free reading of the definition)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@FEW
@given(st.tuples(st.integers(1, 3), st.integers(1, 10), st.integers(1, 10)).flatmap(lambda s: arrays(bool, s)))
def test_masks_to_boxes_matches_numpy(masks):
    expected = torch.tensor([reference_box(mask) for mask in masks])
    assert torch.equal(masks_to_boxes(torch.from_numpy(masks)), expected)


def clip(frames_and_masks):
    pixels, masks = frames_and_masks
    frames = [Image.fromarray(frame) for frame in pixels]
    masks = torch.from_numpy(masks)
    return frames, {"masks": masks, "boxes": masks_to_boxes(masks), "size": torch.tensor(masks.shape[-2:])}


clips = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda s: st.tuples(arrays(np.uint8, (*s, 3)), arrays(bool, s)))
words = st.lists(st.sampled_from(["left", "Right", "LEFT", "leftmost", "rightmost", "the", "cat", "lefty", "é"]),
                 min_size=1, max_size=8).map(" ".join)


@FEW
@given(clips, words)
def test_flipping_twice_is_the_identity_on_frames_masks_boxes_and_sentence(frames_and_masks, caption):
    frames, target = clip(frames_and_masks)
    target["caption"] = caption
    flip = RandomHorizontalFlip(p=1.0)
    once_frames, once = flip(frames, target, random.Random(0))
    twice_frames, twice = flip(once_frames, once, random.Random(0))
    for original, back in zip(frames, twice_frames):
        assert np.array_equal(np.asarray(original), np.asarray(back))
    assert torch.equal(twice["masks"], target["masks"]) and torch.equal(twice["boxes"], target["boxes"])
    assert twice["caption"] == caption
    # One flip mirrors the boxes: x0' = W - x1 on every frame with the object.
    width = target["masks"].shape[-1]
    present = target["masks"].flatten(1).any(dim=1)
    assert torch.equal(once["boxes"][present][:, 0], width - target["boxes"][present][:, 2])


@FEW
@given(masks_2d)
def test_mask_rle_round_trip(mask):
    rle = mask_to_rle(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    assert np.array_equal(rle_to_mask(rle), mask)


@FEW
@given(mask_pairs)
def test_metric_invariants(pair):
    a, b = pair
    assert np.array_equal(jaccard(a, a), np.ones(len(a)))
    assert np.array_equal(boundary_f(a, a), np.ones(len(a)))
    j_ab, j_ba = jaccard(a, b), jaccard(b, a)
    assert np.array_equal(j_ab, j_ba)
    assert ((0 <= j_ab) & (j_ab <= 1)).all()
    f_ab = boundary_f(a, b)
    assert ((0 <= f_ab) & (f_ab <= 1)).all()
    empty = np.zeros_like(a)
    assert np.array_equal(jaccard(empty, empty), np.ones(len(a)))
    assert np.array_equal(boundary_f(empty, empty), np.ones(len(a)))
