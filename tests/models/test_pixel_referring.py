"""The text-to-pixel referring head (models/pixel_referring.py) and its losses in the criterion."""
import math

import torch
from torch.nn import functional as F

from models.criterion import SetCriterion, build_weight_dict
from models.pixel_referring import PixelReferringHead, masked_mean


def test_masked_mean_ignores_padding():
    words = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    padding = torch.tensor([[False, False, True]])
    assert torch.equal(masked_mean(words, padding), torch.tensor([[2.0, 3.0]]))


def test_head_shapes_and_dependence_on_the_sentence():
    torch.manual_seed(0)
    head = PixelReferringHead(hidden_dim=8)
    memory = torch.randn(2 * 3, 8, 4, 5)  # B = 2 sentences x T = 3 frames
    words = torch.randn(2, 4, 8)
    padding = torch.zeros(2, 4, dtype=torch.bool)
    logits = head(memory, words, padding)
    assert logits.shape == (2, 3, 4, 5)
    # The same pixels with the other sentence give other logits; the bias alone is the prior of -2.
    swapped = head(torch.cat([memory[3:], memory[:3]]), words, padding)
    assert not torch.allclose(logits[0], swapped[1])
    pixels = head.pixel(memory[:3])
    sentence = head.sentence(words[0].mean(0))
    expected = torch.einsum("tchw,c->thw", pixels, sentence) / math.sqrt(8) - 2.0
    assert torch.allclose(logits[0], expected, atol=1e-6)


def test_pixel_referring_losses_against_a_hand_computed_case():
    criterion = SetCriterion(matcher=None, weight_dict={})
    masks = torch.zeros(1, 2, 8, 8)
    masks[0, :, :4, :4] = 1  # the top-left quarter of every frame: one 4x4 cell at stride 4 -> grid 2x2
    logits = torch.full((1, 2, 2, 2), -3.0)
    logits[0, :, 0, 0] = 3.0
    losses = criterion.pixel_referring_losses(logits, masks, num_boxes=2.0)
    soft = torch.zeros(1, 8)
    soft[0, [0, 4]] = 1.0
    bce = F.binary_cross_entropy_with_logits(logits.flatten(1), soft)
    assert math.isclose(losses["loss_pixel_referring"].item(), bce.item() / 2, rel_tol=1e-6)
    p = torch.sigmoid(logits.flatten(1))
    dice = 1 - (2 * (p * soft).sum() + 1) / (p.sum() + soft.sum() + 1)
    assert math.isclose(losses["loss_pixel_referring_dice"].item(), dice.item() / 2, rel_tol=1e-6)
    # Partly covered cells are soft targets: the fraction of their pixels in the mask.
    masks[0, :, :4, :4] = 0
    masks[0, :, :2, :4] = 1
    soft_loss = criterion.pixel_referring_losses(torch.zeros(1, 2, 2, 2), masks, 1.0)
    expected = F.binary_cross_entropy_with_logits(torch.zeros(8), torch.tensor([0.5, 0, 0, 0, 0.5, 0, 0, 0]))
    assert math.isclose(soft_loss["loss_pixel_referring"].item(), expected.item(), rel_tol=1e-6)


def test_weights_only_with_the_head():
    loss_cfg = {"cls": 2, "bbox": 5, "giou": 2, "mask": 2, "dice": 5, "pixel_referring": 3, "pixel_referring_dice": 4}
    assert "loss_pixel_referring" not in build_weight_dict(loss_cfg, 0)
    weights = build_weight_dict(loss_cfg, 0, pixel_referring=True)
    assert weights["loss_pixel_referring"] == 3.0 and weights["loss_pixel_referring_dice"] == 4.0
