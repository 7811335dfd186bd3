"""Focal/dice formulas, SetCriterion values and behaviour, build_criterion wiring."""
import math

import pytest
import torch

from models.criterion import SetCriterion, build_criterion, count_valid_frames
from models.losses import dice_loss, sigmoid_focal_loss, subsample_stride2
from models.matcher import SingleTargetMatcher

CFG = {
    "model": {"dec_layers": 3, "aux_loss": True, "pixel_referring": False},
    "matcher": {"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0, "cost_mask": 2.0, "cost_dice": 5.0},
    "loss": {"cls": 2.0, "bbox": 5.0, "giou": 2.0, "mask": 2.0, "dice": 5.0, "focal_alpha": 0.25, "focal_gamma": 2.0,
             "boxes_on_invalid_frames": False},
}
LN2 = math.log(2)


def test_focal_loss_hand_computed():
    logits = torch.tensor([0.0, 0.0, math.log(3), math.log(3)])
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = torch.tensor([
        0.25 * 0.5 ** 2 * LN2,  # p = .5, positive: alpha (1-p)^2 (-ln p)
        0.75 * 0.5 ** 2 * LN2,  # p = .5, negative: (1-alpha) p^2 (-ln(1-p))
        0.25 * 0.25 ** 2 * math.log(4 / 3),  # p = .75, positive
        0.75 * 0.75 ** 2 * math.log(4),  # p = .75, negative
    ])
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2), expected)
    # alpha < 0 disables the class weighting, gamma = 0 gives plain BCE
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0),
                               torch.tensor([LN2, LN2, math.log(4 / 3), math.log(4)]))


def test_dice_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3), -math.log(3)]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # row 0: p = (.5, .5): 1 - (2 * .5 + 1) / (1 + 1 + 1) = 1/3; row 1: p = (.75, .25): 1 - 2.5 / 3 = 1/6
    torch.testing.assert_close(dice_loss(logits, targets), torch.tensor([1 / 3, 1 / 6]))


def test_subsample_stride2_takes_offset_one():
    masks = torch.arange(36.0).view(1, 6, 6)
    assert subsample_stride2(masks).tolist() == [[[7.0, 9.0, 11.0], [19.0, 21.0, 23.0], [31.0, 33.0, 35.0]]]


def make_batch(valid_per_clip, T=3, Q=4, H=16, W=16, seed=0):
    """Targets with a square object and random predictions (logits and masks), no aux outputs."""
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for valid in valid_per_clip:
        valid = torch.tensor(valid)
        masks = torch.zeros(T, H, W)
        masks[:, 4:12, 2:10] = 1
        masks[~valid] = 0
        boxes = torch.tensor([6 / 16, 8 / 16, 8 / 16, 8 / 16]).repeat(T, 1)
        boxes[~valid] = 0
        targets.append({"boxes": boxes, "valid": valid, "masks": masks})
    B = len(targets)
    outputs = {
        "pred_logits": torch.randn(B, T, Q, 1, generator=generator),
        "pred_boxes": torch.rand(B, T, Q, 4, generator=generator) * 0.6 + 0.2,
        "pred_masks_low": torch.randn(B, T, Q, H // 2, W // 2, generator=generator),
        "pred_masks": torch.randn(B, T, H, W, generator=generator),
        "selected_query": torch.randint(Q, (B,), generator=generator),
    }
    return outputs, targets


def make_perfect(outputs, targets):
    """Make the selected slot reproduce the targets with confident logits and all other slots negative."""
    outputs = {key: value.clone() for key, value in outputs.items()}
    outputs["pred_logits"].fill_(-30.0)
    for b, (slot, target) in enumerate(zip(outputs["selected_query"].tolist(), targets)):
        outputs["pred_logits"][b, :, slot, 0] = torch.where(target["valid"], 30.0, -30.0)
        outputs["pred_boxes"][b, :, slot] = target["boxes"]
        outputs["pred_masks_low"][b, :, slot] = subsample_stride2(target["masks"]) * 60 - 30
        outputs["pred_masks"][b] = target["masks"] * 60 - 30
    return outputs


def criterion(**kwargs) -> SetCriterion:
    return build_criterion({**CFG, "loss": {**CFG["loss"], **kwargs}})


def test_hand_computed_losses_single_frame():
    crit = criterion()
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]]), "valid": torch.tensor([True]),
              "masks": torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])}
    outputs = {
        "pred_logits": torch.zeros(1, 1, 2, 1),
        "pred_boxes": torch.tensor([[[[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.25, 0.5]]]]),
        "pred_masks_low": torch.zeros(1, 1, 2, 1, 1),
        "pred_masks": torch.zeros(1, 1, 2, 2),
        "selected_query": torch.tensor([1]),
    }
    losses = crit(outputs, [target])
    assert losses["loss_ce"].item() == pytest.approx(0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.25, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(0.5, rel=1e-5)  # box inside the target with half its area
    # 4 pixels, p = .5 everywhere, one positive: focal = (0.25 + 3 * 0.75) * 0.25 ln 2 / 4
    assert losses["loss_mask"].item() == pytest.approx(2.5 * 0.25 * LN2 / 4, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(1 - (2 * 0.5 + 1) / (2 + 1 + 1), rel=1e-5)
    # stride-2 target is pixel (1, 1) = 1, p = .5
    assert losses["loss_mask_low"].item() == pytest.approx(0.25 * 0.25 * LN2, rel=1e-5)
    assert losses["loss_dice_low"].item() == pytest.approx(1 - 2 / 2.5, rel=1e-5)


def test_perfect_predictions_give_near_zero_losses():
    outputs, targets = make_batch([(True, True, True), (True, False, True)])
    losses = criterion()(make_perfect(outputs, targets), targets)
    for name in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_mask_low", "loss_dice_low"):
        assert losses[name].item() < 1e-4, name
    random_losses = criterion()(outputs, targets)
    assert all(random_losses[name].item() > 0.05 for name in ("loss_bbox", "loss_giou", "loss_dice"))


def test_uses_selected_query_without_rematching():
    outputs, targets = make_batch([(True, True, True)])
    perfect = make_perfect(outputs, targets)
    slot = perfect["selected_query"].item()
    perfect["selected_query"] = torch.tensor([(slot + 1) % 4])  # claim another slot was refined
    assert criterion()(perfect, targets)["loss_bbox"].item() > 0.05


def test_invalid_frames_excluded_from_box_losses_unless_paper_flag():
    outputs, targets = make_batch([(True, False, True)])
    losses = criterion()(outputs, targets)
    changed = {key: value.clone() for key, value in outputs.items()}
    changed["pred_boxes"][0, 1] = torch.rand(4, 4) * 0.5 + 0.2
    changed_losses = criterion()(changed, targets)
    assert changed_losses["loss_bbox"].item() == pytest.approx(losses["loss_bbox"].item())
    assert changed_losses["loss_giou"].item() == pytest.approx(losses["loss_giou"].item())
    paper = criterion(boxes_on_invalid_frames=True)
    assert paper(changed, targets)["loss_bbox"].item() != pytest.approx(paper(outputs, targets)["loss_bbox"].item())


def test_num_boxes_is_valid_frame_count():
    valid = torch.tensor([(True, True, False), (False, True, False)])
    assert count_valid_frames(valid).item() == 3.0
    assert count_valid_frames(torch.zeros(1, 3, dtype=torch.bool)).item() == 1.0


def test_all_invalid_clip_gives_finite_losses_and_gradients():
    outputs, targets = make_batch([(False, False, False), (True, True, True)])
    outputs = {key: value.requires_grad_() if value.is_floating_point() else value for key, value in outputs.items()}
    outputs["pred_boxes"].data[0] = 0  # degenerate boxes on the invisible clip
    losses = criterion()(outputs, targets)
    assert all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(outputs[key].grad).all() for key in ("pred_logits", "pred_boxes", "pred_masks"))
    alone = criterion()({key: value[:1] for key, value in outputs.items()}, targets[:1])
    assert all(torch.isfinite(value) for value in alone.values())


def test_aux_outputs_and_weight_dict_keys():
    outputs, targets = make_batch([(True, True, True)])
    aux = [make_batch([(True, True, True)], seed=seed)[0] for seed in (1, 2)]
    losses = criterion()({**outputs, "aux_outputs": aux}, targets)
    crit = criterion()
    assert set(losses) == set(crit.weight_dict)
    assert len(losses) == 7 * 3
    assert crit.weight_dict["loss_mask_low_1"] == 2.0 and crit.weight_dict["loss_dice_0"] == 5.0
    assert crit.weight_dict["loss_ce"] == 2.0 and crit.weight_dict["loss_bbox"] == 5.0
    assert losses["loss_ce_1"].item() == pytest.approx(criterion()(aux[1], targets)["loss_ce"].item())
    no_aux = build_criterion({**CFG, "model": {"dec_layers": 3, "aux_loss": False, "pixel_referring": False}})
    assert len(no_aux.weight_dict) == 7
    assert isinstance(crit.matcher, SingleTargetMatcher)


def test_optimising_free_predictions_reduces_loss():
    torch.manual_seed(0)
    _, targets = make_batch([(True, True, False), (True, True, True)], T=3, Q=4, H=16, W=16)
    crit = criterion()
    logits = torch.randn(2, 3, 4, 1, requires_grad=True)
    box_logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    masks_low = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    masks = torch.randn(2, 3, 16, 16, requires_grad=True)
    optimizer = torch.optim.Adam([logits, box_logits, masks_low, masks], lr=0.1)

    def total() -> torch.Tensor:
        outputs = {"pred_logits": logits, "pred_boxes": box_logits.sigmoid(), "pred_masks_low": masks_low,
                   "pred_masks": masks, "selected_query": torch.tensor([1, 3])}
        losses = crit(outputs, targets)
        return sum(losses[name] * crit.weight_dict[name] for name in losses)

    initial = total().item()
    for _ in range(50):
        optimizer.zero_grad()
        loss = total()
        loss.backward()
        optimizer.step()
    assert total().item() < initial / 5
