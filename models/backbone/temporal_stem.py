"""TCMR's stride-4 feature: a small trainable conv stem on RGB followed by a temporal conv over frames."""
import math

import torch
from diffusers.models.resnet import TemporalConvLayer
from einops import rearrange
from torch import nn

from util.errors import UserInputError


def _groups(channels: int) -> int:
    """GroupNorm(32) as in the paper, fewer groups where the width is not a multiple of 32."""
    return math.gcd(32, channels)


class TemporalStem(nn.Module):
    """RGB frames -> [B·T, c, H/4, W/4] with temporal context.

    Stem: Conv3×3/s2 (3 -> c/8), GELU, Conv3×3/s2 (c/8 -> c/2), GroupNorm, GELU, Conv1×1 (c/2 -> c).
    Then diffusers' ``TemporalConvLayer``: four [GroupNorm, SiLU, Conv3d (3,1,1)] over T, the last conv
    zero-initialised, with its own residual. The paper adds the stem output a second time; we keep the
    single residual, so at initialisation the output equals the stem output.

    Args:
        channels: c (128 in the paper); must be a multiple of 8.
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels % 8 != 0:
            raise UserInputError(f"model.backbone.tcmr_channels must be a multiple of 8, got {channels}.")
        narrow, mid = channels // 8, channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, narrow, kernel_size=3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(narrow, mid, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(_groups(mid), mid),
            nn.GELU(),
            nn.Conv2d(mid, channels, kernel_size=1),
        )
        self.temporal = TemporalConvLayer(channels, channels, norm_num_groups=_groups(channels))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: [B, T, 3, H, W] in [0, 1]  ->  [B·T, c, ceil(H/4), ceil(W/4)]"""
        num_frames = frames.shape[1]
        identity = self.stem(rearrange(frames, "b t c h w -> (b t) c h w"))
        return self.temporal(identity, num_frames=num_frames)
