"""A referring score from what a slot's mask covers: the sentence's words against the slot's object.

The paper, like ``model.text_alignment``, scores a slot from its decoder output. The probe ladder on RefShapes
(docs/results.md) found the referred object's colour decodable from the transformer memory under its mask (0.65 -
0.78) but hardly from the decoder output (0.32 - 0.43), so a score read from the slot's query cannot match a colour
word however it is trained. ``model.object_referring`` describes each slot, in each frame, by the memory of the
stride-8 level averaged under the slot's own predicted mask (its sigmoid) plus a projection of its box (where it is
and how large), both read detached so that the score does not reshape them, and adds to the slot's class logit the
best scaled dot product of that description with a projected word of the sentence (one module shared by the
decoder layers). Trained by the class loss like the logit it adds to. Not in the paper; off in its configurations.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.text_alignment import best_word_alignment


def masked_average(memory: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """memory [N, C, h, w], weights [N, Q, h, w] in [0, 1] -> [N, Q, C]: each slot's weighted average of the
    memory (an empty mask gives 0)."""
    total = weights.sum(dim=(-2, -1)).clamp_min(1e-6)  # [N, Q]
    return torch.einsum("nqhw,nchw->nqc", weights, memory) / total[..., None]


class ObjectReferring(nn.Module):
    """Per-slot logits: the sentence's words against the slot's masked memory and box (module docstring)."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.object = nn.Linear(hidden_dim, hidden_dim)
        self.box = nn.Linear(4, hidden_dim)
        self.word = nn.Linear(hidden_dim, hidden_dim)
        self.scale = 1 / math.sqrt(hidden_dim)

    def forward(self, memory: torch.Tensor, mask_logits: torch.Tensor, boxes: torch.Tensor, words: torch.Tensor,
                padding_mask: torch.Tensor) -> torch.Tensor:
        """memory [N, C, h, w] (N = frames), mask_logits [N, Q, H', W'] with H', W' multiples of h, w (the slots'
        masks, pooled to the memory's size), boxes [N, Q, 4] (normalised cxcywh), words [N, L, C] (each frame's
        copy of its sentence), padding_mask [N, L] (True = pad) -> logits [N, Q, 1]: max over the real words. The
        masks and boxes are read detached: the score does not reshape them."""
        weights = F.avg_pool2d(mask_logits.detach().sigmoid(), mask_logits.shape[-1] // memory.shape[-1])
        objects = self.object(masked_average(memory, weights)) + self.box(boxes.detach())
        return best_word_alignment(objects, self.word(words), padding_mask, self.scale)
