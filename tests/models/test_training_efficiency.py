"""Training-efficiency options on the tiny HCD: UNet gradient checkpointing, bf16 autocast (``--amp bf16``), frozen
encoders in bf16, SDPA attention everywhere, and the UNet stem shared by the captions of a clip."""
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn
from torch.profiler import ProfilerActivity, profile
from transformers.models.clip.modeling_clip import CLIPAttention
from transformers.models.roberta.modeling_roberta import RobertaSelfAttention

import engine
from main import build_parser, resolve_config
from models import build_model
from util.config import load_config
from util.nested_tensor import NestedTensor

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "refshapes_tiny.yaml"
CAPTIONS = ["the red circle moving left", "the small square"]
ATTENTION_MODULES = (Attention, CLIPAttention, RobertaSelfAttention, nn.MultiheadAttention)


def tiny_config(weights: Path, **backbone_options) -> dict:
    cfg = load_config(CONFIG)
    cfg["weights"] = str(weights)
    cfg["model"]["backbone"].update(backbone_options)
    return cfg


def batch(num_frames: int = 3, size: int = 64) -> tuple[NestedTensor, list[str], list[dict]]:
    """Two clips with one square target each.

    Three frames, not two: oneDNN's bf16 Conv3d weight gradient is wrong (inf/nan) on the CPU when the clip is
    shorter than the (3, 1, 1) temporal kernel but longer than one frame (torch 2.14, T = 2 only).
    """
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(2, num_frames, 3, size, size, generator=generator)
    targets = []
    for top in (8, 32):
        masks = torch.zeros(num_frames, size, size)
        masks[:, top:top + 16, top:top + 16] = 1
        box = torch.tensor([(top + 8) / size, (top + 8) / size, 16 / size, 16 / size])
        targets.append({"masks": masks, "boxes": box.repeat(num_frames, 1),
                        "valid": torch.ones(num_frames, dtype=torch.long)})
    return NestedTensor(frames, torch.zeros(2, num_frames, size, size, dtype=torch.bool)), CAPTIONS, targets


def loss_and_gradients(model, criterion, samples, captions, targets) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the frozen UNet keeps its dropout in train mode (as the paper's): same masks each call
    losses = criterion(model(samples, captions, targets), targets)
    total = sum(losses[k] * w for k, w in criterion.weight_dict.items())
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def model_and_criterion(tiny_weights):
    torch.manual_seed(0)
    return build_model(tiny_config(tiny_weights))


def test_unet_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_weights, model_and_criterion):
    plain, criterion = model_and_criterion
    torch.manual_seed(0)
    checkpointed, _ = build_model(tiny_config(tiny_weights, gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.backbone.unet_features.gradient_checkpointing  # the config flag reaches the UNet walk
    samples, captions, targets = batch()
    results = []
    for model in (plain.train(), checkpointed.train()):
        block_calls = []
        # a pre-hook: the recomputation stops as soon as it has what the backward needs (checkpoint early stop)
        handle = model.backbone.unet_features.unet.down_blocks[1].register_forward_pre_hook(
            lambda *_, calls=block_calls: calls.append(1))
        results.append((*loss_and_gradients(model, criterion, samples, captions, targets), len(block_calls)))
        handle.remove()
    (plain_loss, plain_grads, plain_calls), (ckpt_loss, ckpt_grads, ckpt_calls) = results
    assert (plain_calls, ckpt_calls) == (1, 2)  # checkpointing recomputes the block in the backward pass
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys()
    assert any(".lora_" in name for name in plain_grads)  # the LoRA inside the checkpointed blocks trains
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_training_step_is_close_to_float32(model_and_criterion):
    model, criterion = model_and_criterion
    model.train()
    samples, captions, targets = batch()
    loss_fp32, grads_fp32 = loss_and_gradients(model, criterion, samples, captions, targets)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(samples, captions, targets)
    assert outputs["pred_logits"].dtype == torch.bfloat16  # autocast really ran the trainable layers in bf16
    losses = criterion(engine.to_float32(outputs), targets)
    loss_bf16 = sum(losses[k] * w for k, w in criterion.weight_dict.items())
    loss_bf16.backward()
    assert abs(loss_bf16.item() - loss_fp32.item()) < 0.02 * loss_fp32.item()
    flat_fp32 = torch.cat([grads_fp32[n].flatten() for n in sorted(grads_fp32)])
    flat_bf16 = torch.cat([model.get_parameter(n).grad.flatten() for n in sorted(grads_fp32)])
    assert torch.isfinite(flat_bf16).all()
    assert torch.nn.functional.cosine_similarity(flat_fp32, flat_bf16, dim=0) > 0.99


def test_amp_bf16_flag_runs_the_training_forward_under_autocast(tiny_weights, model_and_criterion, tmp_path):
    model, criterion = model_and_criterion
    args = build_parser().parse_args(["--config", str(CONFIG), "--weights", str(tiny_weights), "--amp", "bf16",
                                      "--output_dir", str(tmp_path)])
    cfg, _ = resolve_config(args)
    assert cfg["train"]["amp"] == "bf16"
    seen = []
    handle = model.transformer.register_forward_pre_hook(
        lambda *_: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    samples, captions, targets = batch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    engine.train_one_epoch(model, criterion, [(samples, captions, targets)], optimizer, None, torch.device("cpu"),
                           0, step=0, amp=cfg["train"]["amp"])
    handle.remove()
    assert seen == [(True, torch.bfloat16)]


def test_frozen_encoders_in_bf16_stay_close_to_float32(tiny_weights, model_and_criterion):
    reference = model_and_criterion[0].backbone
    torch.manual_seed(0)
    half, _ = build_model(tiny_config(tiny_weights, frozen_dtype="bfloat16"))
    assert {p.dtype for p in half.backbone.frozen.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.backbone.unet_features.parameters()} == {torch.float32}  # UNet: autocast instead
    samples, _, _ = batch()
    full, low = (backbone.encode_frames(samples.tensors, samples.mask) for backbone in (reference, half.backbone))
    for name in ("latents", "image_tokens"):
        a, b = getattr(full, name), getattr(low, name)
        assert b.dtype == torch.float32
        relative = (a - b).norm() / a.norm()
        assert 0 < relative < 0.02, name  # bf16 really ran, and stays within its rounding


def test_every_attention_goes_through_scaled_dot_product_attention(model_and_criterion):
    model, criterion = model_and_criterion
    backbone = model.backbone
    processors = backbone.unet_features.unet.attn_processors | backbone.frozen.vae.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())
    for encoder in (backbone.frozen.clip_text, backbone.frozen.clip_vision, model.text_encoder.roberta):
        assert encoder.config._attn_implementation == "sdpa"

    calls = []
    handles = [module.register_forward_hook(lambda *_: calls.append(1))
               for module in model.modules() if isinstance(module, ATTENTION_MODULES)]
    samples, captions, targets = batch()
    model.train()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        criterion(model(samples, captions, targets), targets)
    for handle in handles:
        handle.remove()
    sdpa_calls = sum(event.count for event in profiler.key_averages() if event.key == "aten::scaled_dot_product_attention")
    kinds = {type(module) for module in model.modules() if isinstance(module, ATTENTION_MODULES)}
    assert len(kinds) == len(ATTENTION_MODULES)  # every kind of attention of the model is covered
    assert sdpa_calls == len(calls) > 0  # one fused SDPA call per attention call, none computed by hand


def test_the_captions_of_a_clip_share_the_unet_stem(model_and_criterion):
    unet_features = model_and_criterion[0].backbone.unet_features.eval()
    latents = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    conditions = torch.randn(2, 2, 3, 77, 32, generator=torch.Generator().manual_seed(2))  # [B, K, T, L, D]
    stem_calls = []
    handle = unet_features.unet.transformer_in.register_forward_hook(lambda *_: stem_calls.append(1))
    with torch.no_grad():
        shared = unet_features(latents, conditions.flatten(0, 2))  # (b k t) rows
        assert len(stem_calls) == 1
        separate = [unet_features(latents[b:b + 1], conditions[b, k]) for b in range(2) for k in range(2)]
    handle.remove()
    for level, tap in enumerate(shared):
        torch.testing.assert_close(tap, torch.cat([taps[level] for taps in separate]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple B·K·T"):
        unet_features(latents, conditions.flatten(0, 2)[:-1])
