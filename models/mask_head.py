"""The hybrid segmentation head of HCD.

Two branches produce, per query and frame, ``c`` channels at stride 8 (``model.dynamic_mask_channels``). They are
summed in logit space and are, or are mixed into, the 16 values of a 4x4 sub-pixel patch of the mask (pixel-shuffled
to stride 2, and refined by ``models/tcmr.py``):

- **dot product** (MaskFormer-style): the encoder memory levels, resized to stride 8, are mixed by a learned
  ``Linear(num_levels, c)`` into ``c`` per-pixel embeddings that each query is dotted with;
- **dynamic convolution** (CondInst/ReferFormer-style): a controller MLP turns each query into the weights of
  ``controller_layers`` 1x1 convolutions applied to the summed memory levels plus the pixels' coordinates
  relative to the query's box centre.

The level count and the channel count come from the configuration; nothing is tied to 3 levels or 16 channels:
with ``c = 16`` (the paper) the sum is the patch itself, any other ``c`` is mixed into it by a learned
``Linear(c, 16)``.
"""
from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from models.mlp import MLP

PATCH_CHANNELS = 16  # a 4x4 sub-pixel patch of the mask per stride-8 cell


class PixelFeatures(NamedTuple):
    """The encoder memory as both branches read it, the same for every decoder layer.

    embeddings: [N, C, h, w, c] the levels, resized to stride 8, mixed into ``c`` per-pixel embeddings (dot product).
    summed: [N, C, h, w] the sum of the resized levels (the dynamic convolution's input).
    """
    embeddings: torch.Tensor
    summed: torch.Tensor


def relative_coordinates(centres: torch.Tensor, size: tuple[int, int], valid_ratios: torch.Tensor) -> torch.Tensor:
    """Offsets from each query's centre to each stride-8 cell centre, in units of the unpadded image.

    Args:
        centres: [N, Q, 2] normalised (x, y) of the queries' boxes in the unpadded image.
        size: (h, w) of the stride-8 grid of the padded input.
        valid_ratios: [N, 2] unpadded fraction (w, h) of the padded grid.
    Returns:
        [N, Q, 2, h, w] ``centre - cell``.
    """
    height, width = size
    ys = (torch.arange(height, device=centres.device, dtype=centres.dtype) + 0.5) / height
    xs = (torch.arange(width, device=centres.device, dtype=centres.dtype) + 0.5) / width
    cell_x = xs[None, :] / valid_ratios[:, 0, None]  # [N, w]
    cell_y = ys[None, :] / valid_ratios[:, 1, None]  # [N, h]
    dx = centres[..., 0, None] - cell_x[:, None, :]  # [N, Q, w]
    dy = centres[..., 1, None] - cell_y[:, None, :]  # [N, Q, h]
    return torch.stack(
        [dx[:, :, None, :].expand(-1, -1, height, -1), dy[:, :, :, None].expand(-1, -1, -1, width)], dim=2
    )


class HybridMaskHead(nn.Module):
    """Per-query sub-pixel mask logits at stride 8 (``out_channels`` = 16 of them, a 4x4 patch) from the decoder
    queries and the encoder memory, through ``mask_channels`` channels in both branches."""

    def __init__(
        self, hidden_dim: int, num_levels: int, mask_channels: int, controller_layers: int, rel_coord: bool
    ):
        super().__init__()
        self.rel_coord = rel_coord
        self.level_mix = nn.Linear(num_levels, mask_channels)
        in_dims = [hidden_dim + (2 if rel_coord else 0)] + [mask_channels] * (controller_layers - 1)
        self.weight_shapes = [(mask_channels, d) for d in in_dims]
        num_params = sum(o * i + o for o, i in self.weight_shapes)
        self.controller = MLP(hidden_dim, hidden_dim, num_params, 3)
        for layer in self.controller.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.out_channels = PATCH_CHANNELS
        # The paper's 16 channels are the patch; others are mixed into it (no extra parameters for 16).
        self.to_patch = None if mask_channels == PATCH_CHANNELS else nn.Linear(mask_channels, PATCH_CHANNELS)

    def pixel_features(self, memory: list[torch.Tensor]) -> PixelFeatures:
        """The half of the head that no decoder layer changes, computed once per forward for all of them.

        memory: encoder memory levels [N, C, h_l, w_l]; the first one is at stride 8.
        """
        size = memory[0].shape[-2:]
        levels = [memory[0]] + [
            F.interpolate(level, size=size, mode="bicubic", align_corners=False) for level in memory[1:]
        ]
        return PixelFeatures(embeddings=self.level_mix(torch.stack(levels, dim=-1)), summed=sum(levels))

    def forward(
        self, queries: torch.Tensor, pixels: PixelFeatures, centres: torch.Tensor, valid_ratios: torch.Tensor
    ) -> torch.Tensor:
        """Mask features of every query of one decoder layer.

        Args:
            queries: [N, Q, C] decoder output of one layer (N = frames).
            pixels: ``self.pixel_features(memory)``.
            centres: [N, Q, 2] normalised box centres of the queries (detached by the caller).
            valid_ratios: [N, 2] unpadded fraction (w, h) of the stride-8 grid.
        Returns:
            [N, Q, 16, h, w] sub-pixel mask logits at stride 8.
        """
        dot = torch.einsum("nqc,nchwk->nqkhw", queries, pixels.embeddings)
        dynamic = self._dynamic_convolution(queries, pixels.summed, centres, valid_ratios)
        features = dot + dynamic  # [N, Q, c, h, w]
        if self.to_patch is None:
            return features
        return torch.einsum("nqchw,kc->nqkhw", features, self.to_patch.weight) + self.to_patch.bias[:, None, None]

    def _dynamic_convolution(
        self, queries: torch.Tensor, features: torch.Tensor, centres: torch.Tensor, valid_ratios: torch.Tensor
    ) -> torch.Tensor:
        """queries [N, Q, C], features [N, C, h, w] -> [N, Q, c, h, w] through per-query 1x1 convolutions."""
        params = self.controller(queries)  # [N, Q, P]
        weights, biases, offset = [], [], 0
        for out_dim, in_dim in self.weight_shapes:
            weights.append(rearrange(params[..., offset : offset + out_dim * in_dim], "n q (o i) -> n q o i", o=out_dim))
            offset += out_dim * in_dim
        for out_dim, _ in self.weight_shapes:
            biases.append(params[..., offset : offset + out_dim, None, None])
            offset += out_dim
        channels = features.shape[1]
        x = torch.einsum("nqoc,nchw->nqohw", weights[0][..., :channels], features)
        if self.rel_coord:
            coords = relative_coordinates(centres, features.shape[-2:], valid_ratios)  # [N, Q, 2, h, w]
            x = x + torch.einsum("nqoj,nqjhw->nqohw", weights[0][..., channels:], coords)
        x = x + biases[0]
        for weight, bias in zip(weights[1:], biases[1:]):
            x = torch.einsum("nqoi,nqihw->nqohw", weight, F.relu(x)) + bias
        return x
