"""The paper's configuration at full width with one layer per block: one training step on real CPU tensors.

``benchmarks/bench_full_size.py`` runs the real depths (2.6 B parameters, ~2.5 minutes, 13.5 GB); this keeps every
width of it (UNet 320/640/1280/1280 with 64-wide heads and 1024-wide cross-attention, CLIP-H 1280, the OpenCLIP-H
text encoder 1024, RoBERTa 768, d_model 256, out_channels 256/512/1024) with one layer per UNet block and per
encoder, so that a channel mistake anywhere in the wiring fails here, in the default test run.
"""
import pytest
import torch

from benchmarks.full_size import (build_random_model, model_config, one_layer_configs, synthetic_clip,
                                  trainable_parameters, training_step)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def full_width_model():
    model, criterion, _ = build_random_model(model_config("float32"), torch.device("cpu"), "float32",
                                             one_layer_configs())
    return model, criterion


def test_full_width_training_step_reaches_every_level(full_width_model):
    model, criterion = full_width_model
    backbone = model.backbone
    assert backbone.unet_features.tap_channels == [320, 320, 640, 1280, 1280, 640]
    assert backbone.num_channels == [256, 512, 1024] and model.transformer.d_model == 256

    batch = synthetic_clip(1, 2, 64, 64, torch.device("cpu"))
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.0)
    step = training_step(model, criterion, optimizer, batch, torch.device("cpu"), "float32")
    assert torch.isfinite(torch.tensor(step["loss"])) and step["lora_grad_norm"] > 0

    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable parameters without a gradient (DDP would fail): {missing[:5]}"
    unet = backbone.unet_features.unet
    for block in ("down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.1", "up_blocks.2"):
        grads = [p.grad for name, p in unet.named_parameters() if name.startswith(block) and "lora_B" in name]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no LoRA gradient reaches {block}"


def test_full_width_inference_gives_masks_at_the_input_size(full_width_model):
    model, _ = full_width_model
    samples, captions, _ = synthetic_clip(1, 2, 64, 96, torch.device("cpu"), captions_per_clip=2)
    with torch.inference_mode():
        outputs = model.eval()(samples, captions)
    assert outputs["pred_masks"].shape == (2, 2, 64, 96)
    assert outputs["pred_logits"].shape == (2, 2, 5, 1) and torch.isfinite(outputs["pred_masks"]).all()
