"""Text-to-pixel referring logits: an auxiliary, dense view of which pixels the sentence names.

CRIS-style (Wang et al., CVPR'22): every pixel of the stride-8 encoder memory gets an embedding, the sentence
one vector (the masked mean of its projected RoBERTa words through an MLP), and their scaled dot product is the
pixel's logit of belonging to the referred object. Trained with ``loss.pixel_referring`` (BCE) and
``loss.pixel_referring_dice`` against the ground-truth mask at stride 8, it supervises the text-vision interaction
at every pixel of every frame, where the class score of the set prediction gives one bit per slot. Not in the
paper: ``model.pixel_referring`` switches it on (the RefShapes demo), the paper configurations keep it off.
"""
import math

import torch
from einops import rearrange
from torch import nn

from models.mlp import MLP


def masked_mean(words: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens: words [B, L, C], padding_mask [B, L] (True = pad) -> [B, C]."""
    keep = (~padding_mask).to(words.dtype)[..., None]
    return (words * keep).sum(1) / keep.sum(1).clamp(min=1)


class PixelReferringHead(nn.Module):
    """Per-pixel referring logits from the stride-8 memory and the sentence's words."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.pixel = nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(hidden_dim, hidden_dim, 1))
        self.sentence = MLP(hidden_dim, hidden_dim, hidden_dim, 2)
        self.bias = nn.Parameter(torch.tensor(-2.0))  # most pixels are not the referred object
        self.scale = 1 / math.sqrt(hidden_dim)

    def forward(self, memory: torch.Tensor, words: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """memory [B·T, C, h, w] (frames of sentence b in rows b·T..b·T+T-1), words [B, L, C], padding_mask
        [B, L] -> logits [B, T, h, w]."""
        sentence = self.sentence(masked_mean(words, padding_mask))  # [B, C]
        pixels = rearrange(self.pixel(memory), "(b t) c h w -> b t c h w", b=words.shape[0])
        return torch.einsum("btchw,bc->bthw", pixels, sentence) * self.scale + self.bias
