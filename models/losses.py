"""Sigmoid focal loss and dice loss on logits, as pure functions shared by the matcher and the criterion.

Both take logits and binary targets (of the logits' shape, or one that broadcasts to it) and return
per-element (focal) or per-row (dice) values; callers choose the reduction.
"""
import torch
import torch.nn.functional as F


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Element-wise focal loss (Lin et al., 2017) of sigmoid ``logits`` against ``targets`` in [0, 1].

    FL = alpha_t * (1 - p_t)^gamma * BCE, with p_t = p for positives and 1 - p for negatives and
    alpha_t = alpha for positives, 1 - alpha for negatives. ``alpha < 0`` disables the weighting.
    Returns a tensor of ``logits``' shape.
    """
    targets = targets.to(logits.dtype)
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets.expand_as(logits), reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Dice loss with ``+smooth`` on numerator and denominator, per row of ``[N, P]`` logits vs targets.

    1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth), p = sigmoid(logits). Returns ``[N]``.
    """
    prob = logits.sigmoid()
    targets = targets.to(prob.dtype)
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + smooth) / (denominator + smooth)


def subsample_stride2(masks: torch.Tensor) -> torch.Tensor:
    """Ground truth at the resolution of the stride-2 "low" masks: every second pixel, offset 1.

    ``[..., H, W]`` -> ``[..., H // 2, W // 2]``; pixel (y, x) of the result is pixel (2y+1, 2x+1) of the input,
    the lower-right pixel of each 2x2 cell (the paper's choice; ``[..., 1::2, 1::2]``).
    """
    return masks[..., 1::2, 1::2]
