"""U-shaped pairing of the six UNet taps and their projection to the backbone's three levels.

Maps of the same stride from the encoder and the decoder side of the UNet are concatenated on the
channel axis, (f0, f5) at /8, (f1, f4) at /16, (f2, f3) at /32, and each pair goes through two 1×1
convs with no norm and no activation (as the paper).
"""
import torch
from torch import nn

from util.errors import UserInputError

# Indices into the taps f0..f5, finest level first.
PAIRS = ((0, 5), (1, 4), (2, 3))


def pair_channels(tap_channels: list[int]) -> list[int]:
    """Input channels of the three projections: (960, 1600, 1920) at full size."""
    return [tap_channels[i] + tap_channels[j] for i, j in PAIRS]


def hidden_channels(out_channels: list[int]) -> list[int]:
    """Width of each projection's middle layer: twice its output, capped at the widest output.

    This reproduces the paper's 960->512->256, 1600->1024->512, 1920->1024->1024.
    """
    widest = max(out_channels)
    return [min(2 * out, widest) for out in out_channels]


class PairProjection(nn.Module):
    """Concatenate the U-paired taps and project each pair with Conv1×1 -> Conv1×1.

    Args:
        tap_channels: channels of f0..f5.
        out_channels: output channels per level, finest first ([256, 512, 1024] in the paper).
    """

    def __init__(self, tap_channels: list[int], out_channels: list[int]):
        super().__init__()
        if len(out_channels) != len(PAIRS):
            raise UserInputError(f"model.backbone.out_channels needs {len(PAIRS)} values (strides 8, 16, 32), "
                                 f"got {list(out_channels)}.")
        self.in_channels = pair_channels(tap_channels)
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, mid, kernel_size=1), nn.Conv2d(mid, cout, kernel_size=1))
            for cin, mid, cout in zip(self.in_channels, hidden_channels(out_channels), out_channels))

    def forward(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """taps f0..f5 [B·T, C_i, h_i, w_i]  ->  3 maps [B·T, out_l, h_l, w_l] at strides 8, 16, 32."""
        return [projection(torch.cat([taps[i], taps[j]], dim=1))
                for projection, (i, j) in zip(self.projections, PAIRS)]
