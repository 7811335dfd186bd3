"""TCMR part B: the mask refiner applied to the selected query (SgMg's "MSO", written here).

The hybrid head emits, per query, ``c = r*r`` channels at stride 8 that are a sub-pixel patch of the mask. The
refiner fuses them with the stride-8 backbone map, upsamples to stride 4, fuses them with the TCMR stride-4
temporal feature, and pixel-shuffles by ``r`` to the full padded input resolution. It is purely spatial: the
temporal context comes from the stride-4 feature (``models/backbone``), and it has no loss of its own.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F


def subpixel_factor(mask_channels: int) -> int:
    """The pixel-shuffle factor ``r`` of ``mask_channels = r*r`` channels; stride 4 needs ``r = 4`` (16).

    The refiner takes the mask head's output, always 16 channels (``HybridMaskHead.out_channels``: any
    ``model.dynamic_mask_channels`` is mixed into them)."""
    factor = math.isqrt(mask_channels)
    if factor * factor != mask_channels or factor != 4:
        raise ValueError(
            f"MaskRefiner(mask_channels={mask_channels}): the refiner takes the 16 channels of a 4x4 sub-pixel patch "
            "(HybridMaskHead.out_channels), so that stride-8 masks shuffle to stride 2 and the refined stride-4 "
            "masks to full resolution"
        )
    return factor


class FusionBlock(nn.Module):
    """``x += conv(relu(conv(relu(cat(x, context)))))``, the residual fusion step of the refiner."""

    def __init__(self, channels: int, context_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(channels + context_channels, channels, 3, padding=1)
        self.conv_out = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: [N, c, h, w]; context: [N, C, h, w] -> [N, c, h, w]."""
        delta = self.conv_in(F.relu(torch.cat([x, context], dim=1)))
        return x + self.conv_out(F.relu(delta))


class MaskRefiner(nn.Module):
    """Refines the stride-8 sub-pixel mask features of one query per clip to full-resolution mask logits."""

    def __init__(self, mask_channels: int, stride8_channels: int, stride4_channels: int):
        super().__init__()
        self.factor = subpixel_factor(mask_channels)
        self.fuse_stride8 = FusionBlock(mask_channels, stride8_channels)
        self.fuse_stride4 = FusionBlock(mask_channels, stride4_channels)

    def forward(
        self, mask_features: torch.Tensor, stride8: torch.Tensor, stride4: torch.Tensor
    ) -> torch.Tensor:
        """Refine.

        Args:
            mask_features: [N, c, H/8, W/8] sub-pixel mask logits of the selected query (N = frames).
            stride8: [N, C8, H/8, W/8] backbone map at stride 8.
            stride4: [N, C4, H/4, W/4] TCMR stride-4 temporal feature.
        Returns:
            [N, H, W] mask logits at the padded input resolution.
        """
        x = self.fuse_stride8(mask_features, stride8)
        x = F.interpolate(x, size=stride4.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse_stride4(x, stride4)
        return F.pixel_shuffle(x, self.factor).squeeze(1)
