"""A text-dependent referring score: how well a slot's decoder output matches the sentence's words.

The paper scores a slot with a linear head on its decoder output, so the sentence reaches the score only through
the content queries and the decoder. ReferDINO (as GLIP before it) scores by alignment instead: the largest scaled
dot product of the projected query with a projected word. ``model.text_alignment`` adds that alignment to every
decoder layer's class logit (one projection pair shared by the layers), so the score is bilinear in vision and
text from the first step. Not in the paper; off in its configurations.
"""
import math

import torch
from torch import nn


def best_word_alignment(slots: torch.Tensor, words: torch.Tensor, padding_mask: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """slots [N, Q, C] and words [N, L, C] (both projected), padding_mask [N, L] (True = pad) -> logits [N, Q, 1]:
    for each slot the largest ``scale`` x dot product with a real word."""
    similarity = torch.einsum("nqc,nlc->nql", slots, words) * scale
    similarity = similarity.masked_fill(padding_mask[:, None, :], torch.finfo(similarity.dtype).min)
    return similarity.max(dim=-1, keepdim=True).values


class TextAlignment(nn.Module):
    """Per-slot alignment logits with the words of its sentence (module docstring)."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.query = nn.Linear(hidden_dim, hidden_dim)
        self.word = nn.Linear(hidden_dim, hidden_dim)
        self.scale = 1 / math.sqrt(hidden_dim)

    def forward(self, queries: torch.Tensor, words: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """queries [N, Q, C] (N = frames, each with its sentence's copy of the words), words [N, L, C],
        padding_mask [N, L] (True = pad) -> logits [N, Q, 1]: max over the real words of the scaled dot product."""
        return best_word_alignment(self.query(queries), self.word(words), padding_mask, self.scale)
