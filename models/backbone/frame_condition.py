"""Per-frame UNet condition: the caption's CLIP-text tokens attend to the frame's CLIP image tokens.

The ModelScope UNet was trained with one text condition per video. HCD turns it into a condition
per frame: the 77 CLIP-text tokens of the referring expression query the projected CLIP image
tokens of each frame, so that the UNet's cross-attention sees what the sentence picks out in that
particular frame.
"""
import torch
from torch import nn


class ResidualMLP(nn.Module):
    """Linear(in->out), Linear(out->out), plus a residual from the first linear; no nonlinearity (as the paper)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        return hidden + self.fc2(hidden)


class TextImageCrossAttention(nn.Module):
    """Text tokens query image tokens; post-norm transformer layer without attention biases.

    Multi-head attention (``dim // 64`` heads of width 64, at least one head, no bias) + residual +
    LayerNorm(eps 1e-6), then an FFN dim -> dim/2 -> dim (ReLU) + residual + LayerNorm(eps 1e-6).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, max(1, dim // 64), bias=False, batch_first=True)
        self.attention_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(inplace=True), nn.Linear(dim // 2, dim))
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """text: [N, L, D], image: [N, N_img, D]  ->  [N, L, D]"""
        attended, _ = self.attention(text, image, image, need_weights=False)
        hidden = self.attention_norm(text + attended)
        return self.ffn_norm(hidden + self.ffn(hidden))


class FrameCondition(nn.Module):
    """CLIP image tokens -> ResidualMLP -> text-image cross-attention -> per-frame UNet condition.

    Args:
        image_dim: width of the CLIP vision tokens (1280 for CLIP-H).
        condition_dim: the UNet's ``cross_attention_dim`` (1024), also the CLIP-text width.
    """

    def __init__(self, image_dim: int, condition_dim: int):
        super().__init__()
        self.image_proj = ResidualMLP(image_dim, condition_dim)
        self.cross_attention = TextImageCrossAttention(condition_dim)

    def project_images(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """[N, N_img, Dv] -> [N, N_img, Dc]; caption-independent, so it can be shared by several captions."""
        return self.image_proj(image_tokens)

    def forward(self, text_tokens: torch.Tensor, projected_images: torch.Tensor) -> torch.Tensor:
        """text_tokens: [N, L, Dc] (the caption, repeated per frame), projected_images: [N, N_img, Dc]
        ->  condition [N, L, Dc], N = clips × frames."""
        return self.cross_attention(text_tokens, projected_images)
