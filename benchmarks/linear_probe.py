"""Linear probes: how much of a label a feature holds, as the held-out accuracy of a multinomial logistic regression.

Features are standardised with the mean and standard deviation of the fitting set; the regression (weights and
biases, L2 penalty ``WEIGHT_DECAY`` on the weights) is fitted full-batch with L-BFGS in float64. Its accuracy on
the held-out set is set against the majority-class baseline: always answering the fitting set's most frequent
label. ``cosine_within_between`` says how parallel features are for samples that share a label and for those that
do not.
"""
from collections import Counter

import torch
from torch.nn import functional as F

WEIGHT_DECAY = 1e-2
MAX_ITERATIONS = 300


def standardise(fit: torch.Tensor, held_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fit [N, D], held_out [M, D] -> both shifted and scaled by the fit set's per-dimension mean and std."""
    mean, std = fit.mean(dim=0), fit.std(dim=0, correction=0).clamp(min=1e-8)
    return (fit - mean) / std, (held_out - mean) / std


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """features [N, D] float64, labels [N] long in [0, num_classes) -> weights [D, num_classes], bias [num_classes].

    Minimises mean cross-entropy + WEIGHT_DECAY / 2 * |weights|^2.
    """
    weights = torch.zeros(features.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=MAX_ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weights + bias, labels) + WEIGHT_DECAY / 2 * weights.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weights.detach(), bias.detach()


def probe_accuracy(fit_x: torch.Tensor, fit_y: list[str], held_x: torch.Tensor, held_y: list[str]) -> float | None:
    """Held-out accuracy of a linear probe fitted on (fit_x [N, D], fit_y) and scored on (held_x [M, D], held_y).

    None when either set is empty. A fitting set with a single label gives the majority baseline.
    """
    if not fit_y or not held_y:
        return None
    classes = sorted(set(fit_y))
    if len(classes) == 1:
        return majority_accuracy(fit_y, held_y)
    fit_x, held_x = standardise(fit_x.double(), held_x.double())
    index = {name: i for i, name in enumerate(classes)}
    weights, bias = fit_logistic(fit_x, torch.tensor([index[y] for y in fit_y]), len(classes))
    predicted = (held_x @ weights + bias).argmax(dim=1).tolist()
    return sum(classes[p] == y for p, y in zip(predicted, held_y)) / len(held_y)


def majority_accuracy(fit_y: list[str], held_y: list[str]) -> float | None:
    """Accuracy on ``held_y`` of always answering the most frequent label of ``fit_y`` (None if either is empty)."""
    if not fit_y or not held_y:
        return None
    majority = Counter(sorted(fit_y)).most_common(1)[0][0]
    return sum(y == majority for y in held_y) / len(held_y)


def cosine_within_between(features: torch.Tensor, labels: list[str]) -> tuple[float | None, float | None]:
    """Mean cosine similarity of the pairs of rows of ``features`` [N, D] with the same label and with different
    labels (None where there is no such pair)."""
    unit = F.normalize(features.double(), dim=1)
    cosine = unit @ unit.T  # [N, N]
    codes = torch.tensor([sorted(set(labels)).index(y) for y in labels])
    same = codes[:, None] == codes[None, :]
    pairs = torch.triu(torch.ones_like(same), diagonal=1)
    within, between = cosine[same & pairs], cosine[~same & pairs]
    return (within.mean().item() if within.numel() else None, between.mean().item() if between.numel() else None)
