"""The batched matcher and losses against a plain per-clip, per-frame loop written here from the formulas.

Random predictions for B0 = 3 clips x K = 2 sentences (grouped by clip as the model lays them out): objects visible
in some frames only, one absent from its whole clip (its target box the zero box), and degenerate predicted boxes.
The reference computes in float64 with Python-float boxes, independently of ``models/`` and ``util/box_ops``; the
batched code computes in float32: a sum of n terms rounds to within about log2(n) u of their magnitude (u = 2^-24;
8 u = 5e-7 for the 256 pixels of a mask), exp and log add a few u: within the 1e-6 relative (and absolute, for
values near 0) that issue 21 asks for; a batching mistake (another clip's target, a frame not left out) moves a cost
or a loss by far more."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.clip_targets import stack_targets
from models.criterion import SetCriterion
from models.matcher import SingleTargetMatcher

CLIPS, SENTENCES, T, Q, H, W = 3, 2, 3, 5, 16, 16
ALPHA, GAMMA = 0.25, 2.0
COSTS = {"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0, "cost_mask": 2.0, "cost_dice": 5.0}
# Per sentence (clip-major): the frames that show its object; sentence 3 refers to an object absent from its clip.
VISIBLE = [(True, True, True), (True, False, True), (False, True, False), (False, False, False),
           (True, True, False), (True, True, True)]
TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}


def random_targets(generator: torch.Generator) -> list[dict]:
    """One rectangle per sentence, moving and resized from frame to frame, absent where VISIBLE says so."""
    targets = []
    for visible in VISIBLE:
        masks, boxes = torch.zeros(T, H, W), torch.zeros(T, 4)
        for t, shown in enumerate(visible):
            if shown:
                top, left = torch.randint(0, H - 4, (2,), generator=generator).tolist()
                height, width = torch.randint(2, 5, (2,), generator=generator).tolist()
                masks[t, top:top + height, left:left + width] = 1
                boxes[t] = torch.tensor([left + width / 2, top + height / 2, width, height]) / H
        targets.append({"boxes": boxes, "valid": torch.tensor(visible, dtype=torch.long), "masks": masks})
    return targets


def random_layer(generator: torch.Generator, empty_boxes: bool) -> dict:
    """One decoder layer's outputs for the CLIPS * SENTENCES sentences; with ``empty_boxes`` a few predicted boxes on
    frames without the object are empty (their GIoU with the zero box is NaN, so only where those frames are left
    out)."""
    batch = CLIPS * SENTENCES
    boxes = torch.rand(batch, T, Q, 4, generator=generator) * 0.5 + 0.1
    if empty_boxes:
        boxes[1, 1, 2] = boxes[3, :, 0] = 0  # on an invisible frame, and in the absent object's clip
    return {"pred_logits": torch.randn(batch, T, Q, 1, generator=generator) * 3,
            "pred_boxes": boxes,
            "pred_masks_low": torch.randn(batch, T, Q, H // 2, W // 2, generator=generator) * 3,
            "pred_masks": torch.randn(batch, T, H, W, generator=generator) * 3,
            "selected_query": torch.randint(Q, (batch,), generator=generator)}


# --- the reference: one clip, one frame, one box at a time ---------------------------------------------------------

def giou(box: list[float], other: list[float]) -> float:
    """Generalised IoU of two cxcywh boxes in Python floats."""
    def corners(b):
        return b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2

    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = corners(box), corners(other)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def focal(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Element-wise sigmoid focal loss, float64."""
    logits, targets = logits.double(), targets.double()
    prob = logits.sigmoid()
    cross_entropy = targets * F.softplus(-logits) + (1 - targets) * F.softplus(logits)
    p_t = prob * targets + (1 - prob) * (1 - targets)
    return (ALPHA * targets + (1 - ALPHA) * (1 - targets)) * (1 - p_t) ** GAMMA * cross_entropy


def dice(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Dice loss of one flattened clip, float64."""
    prob, targets = logits.double().sigmoid(), targets.double()
    return 1 - (2 * (prob * targets).sum().item() + 1) / (prob.sum().item() + targets.sum().item() + 1)


def box_frames(target: dict, all_frames: bool) -> list[int]:
    return [t for t in range(T) if all_frames or target["valid"][t]]


def reference_costs(layer: dict, targets: list[dict], all_frames: bool) -> torch.Tensor:
    """[B, Q] matcher costs, clip by clip, slot by slot, frame by frame."""
    costs = torch.zeros(len(targets), Q, dtype=torch.float64)
    for b, target in enumerate(targets):
        valid = [t for t in range(T) if target["valid"][t]]
        boxed = box_frames(target, all_frames)
        gt_low = target["masks"][:, 1::2, 1::2].flatten()
        for q in range(Q):
            cost_class = cost_l1 = cost_giou = 0.0
            for t in valid:
                x = float(layer["pred_logits"][b, t, q, 0])
                p = 1 / (1 + math.exp(-x))
                softplus_neg, softplus_pos = math.log1p(math.exp(-x)), math.log1p(math.exp(x))
                cost_class += ALPHA * (1 - p) ** GAMMA * softplus_neg - (1 - ALPHA) * p ** GAMMA * softplus_pos
            for t in boxed:
                box, gt = layer["pred_boxes"][b, t, q].tolist(), target["boxes"][t].tolist()
                cost_l1 += sum(abs(u - v) for u, v in zip(box, gt))
                cost_giou -= giou(box, gt)
            pred_low = layer["pred_masks_low"][b, :, q].flatten()
            costs[b, q] = (COSTS["cost_class"] * cost_class / max(len(valid), 1)
                           + COSTS["cost_bbox"] * cost_l1 / max(len(boxed), 1)
                           + COSTS["cost_giou"] * cost_giou / max(len(boxed), 1)
                           + COSTS["cost_mask"] * focal(pred_low, gt_low).mean().item()
                           + COSTS["cost_dice"] * dice(pred_low, gt_low))
    return costs


def reference_losses(layer: dict, targets: list[dict], all_frames: bool) -> dict[str, float]:
    """The seven losses of one layer, summed clip by clip and divided by the valid frames of the batch."""
    sums = dict.fromkeys(("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_mask_low",
                          "loss_dice_low"), 0.0)
    for b, target in enumerate(targets):
        slot = int(layer["selected_query"][b])
        for t in range(T):
            for q in range(Q):
                is_target = float(q == slot and bool(target["valid"][t]))
                sums["loss_ce"] += focal(layer["pred_logits"][b, t, q], torch.tensor(is_target)).item()
        for t in box_frames(target, all_frames):
            box, gt = layer["pred_boxes"][b, t, slot].tolist(), target["boxes"][t].tolist()
            sums["loss_bbox"] += sum(abs(u - v) for u, v in zip(box, gt))
            sums["loss_giou"] += 1 - giou(box, gt)
        for suffix, pred, gt in (("", layer["pred_masks"][b], target["masks"]),
                                 ("_low", layer["pred_masks_low"][b, :, slot], target["masks"][:, 1::2, 1::2])):
            sums[f"loss_mask{suffix}"] += focal(pred.flatten(), gt.flatten()).mean().item()
            sums[f"loss_dice{suffix}"] += dice(pred.flatten(), gt.flatten())
    num_boxes = max(sum(int(target["valid"].sum()) for target in targets), 1)
    return {name: value / num_boxes for name, value in sums.items()}


# --- the comparisons -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("all_frames", [False, True], ids=["valid_frames", "boxes_on_invalid_frames"])
def test_batched_matcher_equals_the_per_clip_loop(all_frames):
    generator = torch.Generator().manual_seed(0)
    targets = random_targets(generator)
    layer = random_layer(generator, empty_boxes=not all_frames)
    matcher = SingleTargetMatcher(**COSTS, focal_alpha=ALPHA, focal_gamma=GAMMA,
                                  box_cost_on_invalid_frames=all_frames)
    expected = reference_costs(layer, targets, all_frames)
    costs = matcher.costs(layer, stack_targets(targets, torch.device("cpu")))
    torch.testing.assert_close(costs.double(), expected, **TOLERANCE)
    assert matcher(layer, stack_targets(targets, torch.device("cpu"))).tolist() == expected.argmin(1).tolist()


@pytest.mark.parametrize("all_frames", [False, True], ids=["valid_frames", "boxes_on_invalid_frames"])
def test_batched_losses_equal_the_per_clip_loop_on_every_layer(all_frames):
    generator = torch.Generator().manual_seed(1)
    targets = random_targets(generator)
    final, *aux = (random_layer(generator, empty_boxes=not all_frames) for _ in range(3))
    criterion = SetCriterion(matcher=None, weight_dict={}, focal_alpha=ALPHA, focal_gamma=GAMMA,
                             box_loss_on_invalid_frames=all_frames)
    losses = criterion({**final, "aux_outputs": aux}, targets)
    assert len(losses) == 7 * 3
    for suffix, layer in (("", final), ("_0", aux[0]), ("_1", aux[1])):
        for name, expected in reference_losses(layer, targets, all_frames).items():
            torch.testing.assert_close(losses[name + suffix].double(), torch.tensor(expected, dtype=torch.float64),
                                       **TOLERANCE, msg=name + suffix)
