"""The assembled HCD model on tiny components: shapes, gradients, determinism, overfitting, full-size counts."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import build_model
from util.config import load_config
from util.nested_tensor import NestedTensor

REPO = Path(__file__).resolve().parents[2]


def tiny_config(weights: Path) -> dict:
    cfg = load_config(REPO / "configs" / "refshapes_tiny.yaml")
    cfg["weights"] = str(weights)
    return cfg


def box_target(num_frames: int, height: int, width: int, top: int, left: int, size: int) -> dict:
    masks = torch.zeros(num_frames, height, width)
    masks[:, top : top + size, left : left + size] = 1
    box = torch.tensor([(left + size / 2) / width, (top + size / 2) / height, size / width, size / height])
    return {"masks": masks, "boxes": box.repeat(num_frames, 1), "valid": torch.ones(num_frames, dtype=torch.long)}


@pytest.fixture(scope="module")
def model_and_criterion(tiny_weights):
    torch.manual_seed(0)
    return build_model(tiny_config(tiny_weights))


def random_batch(batch=2, num_frames=3, height=64, width=96):
    generator = torch.Generator().manual_seed(1)
    frames = torch.randn(batch, num_frames, 3, height, width, generator=generator)
    padding = torch.zeros(batch, num_frames, height, width, dtype=torch.bool)
    padding[1, :, :, 80:] = True  # the second clip is narrower than the batch
    targets = [box_target(num_frames, height, width, 8, 16, 24), box_target(num_frames, height, width, 30, 40, 16)]
    return NestedTensor(frames, padding), ["the red circle", "the square moving up"], targets


def test_training_outputs_have_the_documented_shapes(model_and_criterion):
    model, _ = model_and_criterion
    model.train()
    samples, captions, targets = random_batch()
    outputs = model(samples, captions, targets)
    assert outputs["pred_logits"].shape == (2, 3, 5, 1)
    assert outputs["pred_boxes"].shape == (2, 3, 5, 4)
    assert outputs["pred_masks_low"].shape == (2, 3, 5, 32, 48)
    assert outputs["pred_masks"].shape == (2, 3, 64, 96)
    assert outputs["selected_query"].shape == (2,)
    assert len(outputs["aux_outputs"]) == 1  # dec_layers = 2
    assert ((outputs["pred_boxes"] > 0) & (outputs["pred_boxes"] < 1)).all()


def test_the_mask_channel_count_is_configurable(model_and_criterion, tiny_weights):
    """model.dynamic_mask_channels other than the paper's 16: the head mixes them into the 4x4 sub-pixel patch,
    the refiner (TCMR) and the stride-2 masks work as with 16, and the loss trains the new mixing layer."""
    cfg = tiny_config(tiny_weights)
    cfg["model"]["dynamic_mask_channels"] = 8
    torch.manual_seed(0)
    model, criterion = build_model(cfg)
    assert model.mask_head.level_mix.out_features == 8 and model.mask_head.weight_shapes[-1][0] == 8
    assert model.mask_head.to_patch.in_features == 8 and model.mask_head.to_patch.out_features == 16
    paper_model, _ = model_and_criterion
    assert paper_model.mask_head.to_patch is None  # 16: the paper's head, its parameters (and checkpoints) unchanged
    assert not any("to_patch" in name for name in paper_model.state_dict())
    model.train()
    samples, captions, targets = random_batch()
    outputs = model(samples, captions, targets)
    assert outputs["pred_masks_low"].shape == (2, 3, 5, 32, 48)
    assert outputs["pred_masks"].shape == (2, 3, 64, 96)
    losses = criterion(outputs, targets)
    sum(losses[key] * weight for key, weight in criterion.weight_dict.items()).backward()
    assert model.mask_head.to_patch.weight.grad.abs().sum() > 0
    assert model.mask_head.level_mix.weight.grad.abs().sum() > 0


def test_every_trainable_parameter_learns_and_frozen_ones_get_no_gradient(model_and_criterion):
    model, criterion = model_and_criterion
    model.train()
    samples, captions, targets = random_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    # Deformable attention starts with zero offsets and weights (as in Deformable DETR), which makes a few
    # gradients exactly zero before the first update: check the second step.
    for _ in range(2):
        optimizer.zero_grad()
        losses = criterion(model(samples, captions, targets), targets)
        sum(losses[k] * w for k, w in criterion.weight_dict.items()).backward()
        silent = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
        optimizer.step()
    assert silent == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(".lora_" not in n and "unet" in n for n in frozen)
    assert any(n.startswith("text_encoder.roberta") for n in frozen)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "unet" in n and "lora_" not in n)


def test_two_eval_forwards_are_bitwise_equal(model_and_criterion):
    model, _ = model_and_criterion
    model.eval()
    samples, captions, _ = random_batch()
    with torch.no_grad():
        first, second = model(samples, captions), model(samples, captions)
    assert torch.equal(first["pred_masks"], second["pred_masks"])
    assert torch.equal(first["pred_logits"], second["pred_logits"])
    assert torch.equal(first["selected_query"], first["pred_logits"].sigmoid().mean(1)[..., 0].argmax(1))
    assert "aux_outputs" not in first


def test_full_size_model_builds_on_meta_with_the_paper_sizes():
    result = subprocess.run(
        [sys.executable, "-m", "scripts.model_summary", "--config", "configs/ytvos_hcd.yaml", "--meta"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["unet"] == 1_411_233_860
    assert round(counts["unet"] / 1e9, 3) == 1.411
    assert round(counts["roberta"] / 1e6, 1) == 124.6
    assert counts["trainable"] == 33_134_294
    frozen = sum(counts[k] for k in ("unet", "vae", "clip_vision", "clip_text", "roberta"))
    assert counts["total"] == frozen + counts["trainable"]


def test_only_the_first_decoder_layer_starts_boxes_small(tiny_weights):
    cfg = tiny_config(tiny_weights)
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    biases = [embed.layers[-1].bias[2:].tolist() for embed in model.bbox_embed]
    assert biases[0] == [-2.0, -2.0]
    assert all(b == [0.0, 0.0] for b in biases[1:])  # later layers keep the size of the box they refine


def test_pixel_referring_and_residual_fusion_outputs(tiny_weights):
    cfg = tiny_config(tiny_weights)
    cfg["model"].update(vl_fusion=True, pixel_referring=True)
    torch.manual_seed(0)
    model, criterion = build_model(cfg)
    model.eval()
    samples, captions, _ = random_batch()
    with torch.no_grad():
        outputs = model(samples, captions)
        srcs, masks, positions = model._levels(model.backbone(samples, captions).features,
                                               model.backbone(samples, captions).masks)
        words, padding = model.text_encoder(captions, samples.tensors.device)
        fused = model._fuse_text(srcs, masks, positions, words, padding, samples.tensors.shape[1])
    assert outputs["pred_referring"].shape == (2, 3, 8, 12)  # stride 8 of 64 x 96
    assert "loss_pixel_referring" in criterion.weight_dict
    # Residual: zeroing the fusion's output projection gives back the visual levels unchanged.
    with torch.no_grad():
        model.vl_fusion.attention.out_proj.weight.zero_()
        model.vl_fusion.attention.out_proj.bias.zero_()
        unchanged = model._fuse_text(srcs, masks, positions, words, padding, samples.tensors.shape[1])
    assert all(torch.equal(a, b) for a, b in zip(unchanged, srcs))
    assert not all(torch.allclose(a, b) for a, b in zip(fused, srcs))
