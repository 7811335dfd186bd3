"""Fixed sine position embeddings: 2-D for feature maps, 1-D for text tokens.

Positions are counted over non-padded elements only (cumulative sums of ``~mask``), so a padded image or
sentence gets the same embedding at its valid positions as the unpadded one. With ``normalize`` they are
divided by the valid extent and scaled to [0, ``scale``].
"""
import math

import torch
from torch import nn


def sine_features(positions: torch.Tensor, num_pos_feats: int, temperature: float) -> torch.Tensor:
    """[...] positions -> [..., num_pos_feats] features: sin(p / T^(2i/d)), cos(p / T^(2i/d)) interleaved."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    angles = positions[..., None] / dim_t
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine2D(nn.Module):
    """The Deformable-DETR 2-D embedding: y features then x features, ``2 * num_pos_feats`` channels.

    With ``normalize``, the k-th valid row (1-based) of a column with n valid rows gets y = (k - 0.5) / n * scale,
    the centre of its cell; x likewise.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000, normalize: bool = True,
                 scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask [N, H, W] bool, True = padding -> embedding [N, 2 * num_pos_feats, H, W] (float32)."""
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # [N, H, W]
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * self.scale
        pos_y = sine_features(y_embed, self.num_pos_feats, self.temperature)  # [N, H, W, d]
        pos_x = sine_features(x_embed, self.num_pos_feats, self.temperature)
        return torch.cat((pos_y, pos_x), dim=-1).permute(0, 3, 1, 2)


class PositionEmbeddingSine1D(nn.Module):
    """The ReferFormer text-token embedding: with ``normalize``, the k-th valid token (1-based) of a sentence
    with n tokens gets x = k / n * scale."""

    def __init__(self, num_pos_feats: int = 256, temperature: float = 10000, normalize: bool = True,
                 scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask [B, L] bool, True = padding -> embedding [B, L, num_pos_feats] (float32)."""
        x_embed = (~mask).cumsum(1, dtype=torch.float32)  # [B, L]
        if self.normalize:
            x_embed = x_embed / (x_embed[:, -1:] + 1e-6) * self.scale
        return sine_features(x_embed, self.num_pos_feats, self.temperature)
