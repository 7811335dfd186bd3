"""Padding clips into a NestedTensor and collating (frames, target) samples."""
import functools

import pytest
import torch

from util.nested_tensor import NestedTensor, collate_clips, nested_tensor_from_videos, padded_size


def test_padded_size_rounds_up_to_the_divisor():
    assert padded_size([(20, 30), (33, 17)], 32) == (64, 32)
    assert padded_size([(20, 30), (33, 17)], 1) == (33, 30)
    assert padded_size([(64, 32)], 32) == (64, 32)


def test_nested_tensor_pads_bottom_right_with_zeros_and_marks_the_padding():
    first = torch.rand(2, 3, 20, 30) + 1  # strictly positive, so padding zeros are distinguishable
    second = torch.rand(2, 3, 33, 17) + 1
    nested = nested_tensor_from_videos([first, second], size_divisibility=32)
    tensors, mask = nested.decompose()
    assert tensors.shape == (2, 2, 3, 64, 32) and mask.shape == (2, 2, 64, 32) and mask.dtype == torch.bool
    assert torch.equal(tensors[0, :, :, :20, :30], first) and torch.equal(tensors[1, :, :, :33, :17], second)
    assert (tensors[0] != 0).sum() == first.numel() and (tensors[1] != 0).sum() == second.numel()
    assert not mask[0, :, :20, :30].any() and mask[0].sum() == 2 * (64 * 32 - 20 * 30)
    assert not mask[1, :, :33, :17].any() and mask[1, :, 33:].all() and mask[1, :, :, 17:].all()


def test_nested_tensor_needs_equal_clip_lengths():
    with pytest.raises(ValueError, match="same number of frames"):
        nested_tensor_from_videos([torch.zeros(2, 3, 8, 8), torch.zeros(3, 3, 8, 8)])


def test_nested_tensor_to_keeps_both_parts():
    nested = nested_tensor_from_videos([torch.ones(1, 3, 5, 6)], size_divisibility=4).to("cpu")
    assert isinstance(nested, NestedTensor)
    assert nested.tensors.shape == (1, 1, 3, 8, 8) and nested.mask.shape == (1, 1, 8, 8)
    assert nested.mask.sum() == 64 - 30


def _sample(height: int, width: int, caption: str):
    masks = torch.zeros(2, height, width)
    masks[:, -1, -1] = 1  # bottom-right pixel: must stay at (height-1, width-1) after padding
    target = {"masks": masks, "boxes": torch.rand(2, 4), "caption": caption, "video": caption}
    return torch.rand(2, 3, height, width), target


def test_collate_pads_masks_like_the_frames():
    collate = functools.partial(collate_clips, size_divisibility=16)
    batch = [_sample(10, 20, "a"), _sample(17, 5, "b")]
    samples, captions, targets = collate(batch)
    assert samples.tensors.shape == (2, 2, 3, 32, 32)
    assert captions == ["a", "b"]
    for (_, original), target in zip(batch, targets):
        height, width = original["masks"].shape[-2:]
        assert target["masks"].shape == (2, 32, 32)
        assert torch.equal(target["masks"][:, :height, :width], original["masks"])
        assert target["masks"].sum() == 2 and target["masks"][:, height - 1, width - 1].tolist() == [1, 1]
        assert torch.equal(target["boxes"], original["boxes"]) and target["video"] == original["video"]
    assert batch[0][1]["masks"].shape == (2, 10, 20)  # the samples themselves are not modified
