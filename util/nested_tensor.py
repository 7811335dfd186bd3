"""Padded batches of video clips (``NestedTensor``) and the data loader's collate function.

Clips in a batch have different frame sizes; they are zero-padded at the bottom and right to a common
size rounded up to ``size_divisibility`` (the coarsest feature stride), and a boolean mask marks the
padding (``True`` = padding), as in DETR.
"""
import math

import torch
import torch.nn.functional as F
from einops import repeat


class NestedTensor:
    """A padded batch: ``tensors`` ``[B, T, 3, Hp, Wp]`` and its padding ``mask`` ``[B, T, Hp, Wp]``."""

    def __init__(self, tensors: torch.Tensor, mask: torch.Tensor):
        self.tensors = tensors
        self.mask = mask

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "NestedTensor":
        return NestedTensor(
            self.tensors.to(device, non_blocking=non_blocking), self.mask.to(device, non_blocking=non_blocking)
        )

    def decompose(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tensors [B, T, 3, Hp, Wp], mask [B, T, Hp, Wp])``."""
        return self.tensors, self.mask

    def __repr__(self) -> str:
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={tuple(self.mask.shape)})"


def padded_size(sizes: list[tuple[int, int]], size_divisibility: int) -> tuple[int, int]:
    """The ``(Hp, Wp)`` that holds every ``(H, W)`` in ``sizes``, rounded up to ``size_divisibility``."""
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    if size_divisibility > 1:
        height = math.ceil(height / size_divisibility) * size_divisibility
        width = math.ceil(width / size_divisibility) * size_divisibility
    return height, width


def nested_tensor_from_videos(videos: list[torch.Tensor], size_divisibility: int = 32) -> NestedTensor:
    """Pad clips ``[T, 3, H_i, W_i]`` (same T) into a ``NestedTensor`` ``[B, T, 3, Hp, Wp]``.

    Pixels are padded with 0 at the bottom and right; ``mask`` is ``True`` on the padding.
    """
    lengths = {video.shape[0] for video in videos}
    if len(lengths) != 1:
        raise ValueError(f"all clips of a batch need the same number of frames, got lengths {sorted(lengths)}")
    num_frames = lengths.pop()
    height, width = padded_size([tuple(video.shape[-2:]) for video in videos], size_divisibility)
    tensors = torch.stack([pad_bottom_right(video, height, width) for video in videos])
    device = videos[0].device
    sizes = torch.tensor([tuple(video.shape[-2:]) for video in videos], device=device)  # [B, 2] (h, w)
    inside_rows = torch.arange(height, device=device) < sizes[:, :1]  # [B, Hp]
    inside_cols = torch.arange(width, device=device) < sizes[:, 1:]  # [B, Wp]
    inside = inside_rows[:, :, None] & inside_cols[:, None, :]  # [B, Hp, Wp]
    mask = repeat(~inside, "b h w -> b t h w", t=num_frames).contiguous()
    return NestedTensor(tensors, mask)


def pad_bottom_right(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[..., h, w]`` -> ``[..., height, width]``, zeros below and to the right."""
    return F.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]))


def collate_clips(
    batch: list[tuple[torch.Tensor, dict]], size_divisibility: int = 32
) -> tuple[NestedTensor, list[str], list[dict]]:
    """Collate ``(frames [T, 3, H, W], target)`` samples into ``(NestedTensor, captions, targets)``.

    A sample may carry a list of K targets (K sentences of one clip, the same K in every sample): captions and
    targets are then grouped by clip (``captions[b * K + k]``), the layout in which the model shares a clip's
    visual work between its sentences.

    Each target's ``"masks"`` ``[T, H, W]`` is zero-padded to ``[T, Hp, Wp]`` like the frames, so the
    criterion can compare masks at the full padded resolution; the other entries are kept as they are
    (``"boxes"`` stay normalised by the unpadded ``"size"``). Use ``functools.partial(collate_clips,
    size_divisibility=...)`` as a DataLoader's ``collate_fn``.
    """
    videos = [frames for frames, _ in batch]
    samples = nested_tensor_from_videos(videos, size_divisibility)
    height, width = samples.tensors.shape[-2:]
    per_clip = {len(target) if isinstance(target, list) else 1 for _, target in batch}
    if len(per_clip) != 1:
        raise ValueError(f"every sample of a batch needs the same number of targets, got {sorted(per_clip)}")
    flat = [t for _, target in batch for t in (target if isinstance(target, list) else [target])]
    targets = []
    for target in flat:
        target = dict(target)
        if "masks" in target:
            target["masks"] = pad_bottom_right(target["masks"], height, width)
        targets.append(target)
    captions = [target["caption"] for target in targets]
    return samples, captions, targets
