"""SingleTargetMatcher: picks the obviously right slot, ignores slot order and invalid-frame boxes."""
import math

import pytest
import torch

from models.clip_targets import stack_targets
from models.matcher import SingleTargetMatcher, build_matcher

T, Q, H, W = 3, 5, 16, 16


def make_target(valid=(True, True, True)) -> dict:
    masks = torch.zeros(T, H, W)
    masks[:, 4:10, 2:8] = 1  # box x 2..8, y 4..10 of 16 -> cxcywh (5, 7, 6, 6) / 16
    boxes = torch.tensor([5 / 16, 7 / 16, 6 / 16, 6 / 16]).repeat(T, 1)
    valid = torch.tensor(valid)
    masks[~valid] = 0
    boxes[~valid] = 0
    return {"boxes": boxes, "valid": valid, "masks": masks}


def perfect_outputs(target: dict, slot: int, generator: torch.Generator) -> dict:
    """Random predictions except in ``slot``, which reproduces the target."""
    logits = torch.randn(1, T, Q, 1, generator=generator)
    boxes = torch.rand(1, T, Q, 4, generator=generator) * 0.5 + 0.1
    masks_low = torch.randn(1, T, Q, H // 2, W // 2, generator=generator)
    logits[0, :, slot, 0] = torch.where(target["valid"], 8.0, -8.0)
    boxes[0, :, slot] = target["boxes"]
    masks_low[0, :, slot] = target["masks"][:, 1::2, 1::2] * 16 - 8
    return {"pred_logits": logits, "pred_boxes": boxes, "pred_masks_low": masks_low}


def stacked(*targets: dict):
    return stack_targets(list(targets), torch.device("cpu"))


def clip_cost(matcher: SingleTargetMatcher, logits, boxes, masks_low, target: dict) -> torch.Tensor:
    """Cost [Q] of one clip: logits [T, Q, 1], boxes [T, Q, 4], masks_low [T, Q, h, w]."""
    outputs = {"pred_logits": logits[None], "pred_boxes": boxes[None], "pred_masks_low": masks_low[None]}
    return matcher.costs(outputs, stacked(target))[0]


def paper_matcher(**kwargs) -> SingleTargetMatcher:
    return SingleTargetMatcher(cost_class=2, cost_bbox=5, cost_giou=2, cost_mask=2, cost_dice=5, **kwargs)


@pytest.mark.parametrize("slot", [0, 2, 4])
def test_perfect_slot_is_chosen(slot):
    generator = torch.Generator().manual_seed(slot)
    target = make_target()
    chosen = paper_matcher()(perfect_outputs(target, slot, generator), stacked(target))
    assert chosen.dtype == torch.long
    assert chosen.tolist() == [slot]


def test_batch_of_clips_matched_independently():
    generator = torch.Generator().manual_seed(0)
    targets = [make_target(), make_target((True, False, True))]
    first, second = perfect_outputs(targets[0], 2, generator), perfect_outputs(targets[1], 4, generator)
    outputs = {key: torch.cat([first[key], second[key]]) for key in first}
    assert paper_matcher()(outputs, stacked(*targets)).tolist() == [2, 4]


def test_invariant_to_slot_permutation():
    generator = torch.Generator().manual_seed(1)
    target = make_target()
    outputs = {"pred_logits": torch.randn(1, T, Q, 1, generator=generator),
               "pred_boxes": torch.rand(1, T, Q, 4, generator=generator) * 0.5 + 0.1,
               "pred_masks_low": torch.randn(1, T, Q, H // 2, W // 2, generator=generator)}
    matcher = paper_matcher()
    costs = clip_cost(matcher, outputs["pred_logits"][0], outputs["pred_boxes"][0], outputs["pred_masks_low"][0],
                              target)
    permutation = torch.randperm(Q, generator=generator)
    permuted = {key: value[:, :, permutation] for key, value in outputs.items()}
    permuted_costs = clip_cost(matcher, permuted["pred_logits"][0], permuted["pred_boxes"][0],
                                       permuted["pred_masks_low"][0], target)
    torch.testing.assert_close(permuted_costs, costs[permutation])
    assert permutation[matcher(permuted, stacked(target))].item() == matcher(outputs, stacked(target)).item()


def test_class_cost_is_focal_difference_over_valid_frames():
    matcher = SingleTargetMatcher(cost_class=1, cost_bbox=0, cost_giou=0, cost_mask=0, cost_dice=0)
    target = make_target((True, False, False))
    logits = torch.zeros(T, Q, 1)
    logits[0, 1] = math.log(3)  # p = 0.75 on the only valid frame
    logits[1:, 1] = -20.0  # invalid frames must not count
    costs = clip_cost(matcher, logits, torch.rand(T, Q, 4), torch.zeros(T, Q, H // 2, W // 2), target)
    # p = 0.5: 0.25 * 0.25 * ln 2 - 0.75 * 0.25 * ln 2 = -0.125 ln 2
    assert costs[0].item() == pytest.approx(-0.125 * math.log(2), rel=1e-5)
    expected = 0.25 * 0.25 ** 2 * math.log(4 / 3) - 0.75 * 0.75 ** 2 * math.log(4)
    assert costs[1].item() == pytest.approx(expected, rel=1e-5)


def test_invalid_frames_do_not_affect_box_cost():
    matcher = SingleTargetMatcher(cost_class=0, cost_bbox=5, cost_giou=2, cost_mask=0, cost_dice=0)
    target = make_target((True, False, True))
    generator = torch.Generator().manual_seed(3)
    boxes = torch.rand(T, Q, 4, generator=generator) * 0.5 + 0.1
    other = boxes.clone()
    other[1] = torch.rand(Q, 4, generator=generator) * 0.5 + 0.1  # change the invalid frame only
    masks = torch.zeros(T, Q, H // 2, W // 2)
    costs = clip_cost(matcher, torch.zeros(T, Q, 1), boxes, masks, target)
    torch.testing.assert_close(clip_cost(matcher, torch.zeros(T, Q, 1), other, masks, target), costs)
    # the paper's variant compares with the zero box there, so the cost changes
    paper = SingleTargetMatcher(cost_class=0, cost_bbox=5, cost_giou=2, cost_mask=0, cost_dice=0,
                                box_cost_on_invalid_frames=True)
    paper_costs = clip_cost(paper, torch.zeros(T, Q, 1), boxes, masks, target)
    assert not torch.allclose(clip_cost(paper, torch.zeros(T, Q, 1), other, masks, target), paper_costs)
    # L1 on a valid frame equals the hand-computed value
    l1_only = SingleTargetMatcher(cost_class=0, cost_bbox=1, cost_giou=0, cost_mask=0, cost_dice=0)
    expected = ((boxes[0] - target["boxes"][0]).abs().sum(-1) + (boxes[2] - target["boxes"][2]).abs().sum(-1)) / 2
    torch.testing.assert_close(clip_cost(l1_only, torch.zeros(T, Q, 1), boxes, masks, target), expected)


def test_all_invalid_clip_is_finite_and_ranked_by_masks():
    target = make_target((False, False, False))
    generator = torch.Generator().manual_seed(4)
    outputs = perfect_outputs(target, 3, generator)
    outputs["pred_boxes"][0, :, :] = 0  # degenerate boxes everywhere: GIoU with the zero box is NaN
    costs = clip_cost(paper_matcher(), outputs["pred_logits"][0], outputs["pred_boxes"][0],
                                      outputs["pred_masks_low"][0], target)
    assert torch.isfinite(costs).all()
    assert paper_matcher()(outputs, stacked(target)).tolist() == [3]


def test_mismatched_mask_size_is_a_clear_error():
    target = make_target()
    outputs = perfect_outputs(target, 0, torch.Generator().manual_seed(0))
    outputs["pred_masks_low"] = outputs["pred_masks_low"][..., :-1, :]
    with pytest.raises(ValueError, match="size_divisibility"):
        paper_matcher()(outputs, stacked(target))


def test_build_matcher_reads_config():
    cfg = {"matcher": {"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0, "cost_mask": 2.0, "cost_dice": 5.0},
           "loss": {"focal_alpha": 0.3, "focal_gamma": 2.0, "boxes_on_invalid_frames": False}}
    matcher = build_matcher(cfg)
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou, matcher.cost_mask, matcher.cost_dice) == (
        2.0, 5.0, 2.0, 2.0, 5.0)
    assert matcher.focal_alpha == 0.3 and matcher.focal_gamma == 2.0
    assert not matcher.box_cost_on_invalid_frames
