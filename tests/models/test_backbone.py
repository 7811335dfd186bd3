"""The visual backbone on the tiny pretrained set (and the full-size one on the meta device)."""
import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers.models.resnet import TemporalConvLayer

from models.backbone import BackboneOutput, VisualBackbone, build_backbone
from models.backbone.frame_condition import ResidualMLP, TextImageCrossAttention
from models.backbone.frozen_encoders import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, clip_pixel_values, imagenet_to_unit
from models.backbone.lora import lora_target_names
from models.backbone.pair_projection import hidden_channels
from models.backbone.temporal_stem import TemporalStem
from models.backbone.unet_features import UNetFeatureExtractor
from models.pretrained import build_pretrained_on_meta, load_pretrained
from util.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CAPTIONS = ["a red circle moving left", "the blue square that does not move"]


def read_config(name: str) -> dict:
    return load_config(CONFIGS / name)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is ~10x faster than two on a busy CPU


@pytest.fixture(scope="module")
def components(tiny_weights):
    return load_pretrained(tiny_weights)


def make_backbone(components, **overrides) -> VisualBackbone:
    """A tiny backbone with a fresh copy of the UNet (LoRA is injected into it in place)."""
    options = dict(out_channels=[64, 64, 64], tcmr_channels=32, lora_rank=4, lora_alpha=8, lora_dropout=0.0,
                   clip_image_size=32)
    options.update(overrides)
    torch.manual_seed(0)
    return VisualBackbone(unet=copy.deepcopy(components.unet), vae=components.vae,
                          clip_vision=components.clip_vision, clip_text=components.clip_text,
                          clip_tokenizer=components.clip_tokenizer, **options)


def make_clip(batch: int, frames: int, height: int, width: int):
    generator = torch.Generator().manual_seed(0)
    tensors = torch.randn(batch, frames, 3, height, width, generator=generator)
    mask = torch.zeros(batch, frames, height, width, dtype=torch.bool)
    return SimpleNamespace(tensors=tensors, mask=mask)


def capture_output(module: torch.nn.Module, store: list):
    return module.register_forward_hook(lambda _module, _inputs, output: store.append(output))


def test_output_shapes_taps_and_masks(components):
    backbone = make_backbone(components).eval()
    clip = make_clip(2, 3, 64, 96)
    clip.mask[1, :, :, 80:] = True  # clip 1 padded on the right by 16 pixels
    clip.mask[0, :, 56:, :] = True  # clip 0 padded at the bottom by 8 pixels
    taps = []
    capture_output(backbone.unet_features, taps)

    encoding = backbone.encode_frames(clip.tensors, clip.mask)
    output = backbone.extract(encoding, CAPTIONS)

    assert encoding.latents.shape == (2, 4, 3, 8, 12)
    assert encoding.image_tokens.shape == (6, 17, 48)  # 4x4 patches + class token, CLIP width 48
    assert [tuple(tap.shape) for tap in taps[0]] == [
        (6, 32, 8, 12), (6, 32, 4, 6), (6, 64, 2, 3), (6, 64, 2, 3), (6, 64, 4, 6), (6, 64, 8, 12)]
    assert isinstance(output, BackboneOutput)
    assert [tuple(f.shape) for f in output.features] == [(6, 64, 8, 12), (6, 64, 4, 6), (6, 64, 2, 3)]
    assert output.stride4.shape == (6, 32, 16, 24)
    assert backbone.num_channels == [64, 64, 64] and backbone.stride4_channels == 32

    expected_s8 = torch.zeros(6, 8, 12, dtype=torch.bool)
    expected_s8[:3, 7:, :] = True
    expected_s8[3:, :, 10:] = True
    assert torch.equal(output.masks[0], expected_s8)
    assert [tuple(m.shape) for m in output.masks] == [(6, 8, 12), (6, 4, 6), (6, 2, 3)]
    expected_s4 = torch.zeros(6, 16, 24, dtype=torch.bool)
    expected_s4[:3, 14:, :] = True
    expected_s4[3:, :, 20:] = True
    assert torch.equal(output.stride4_mask, expected_s4)


def test_odd_latent_sizes_pair_without_cropping(components):
    backbone = make_backbone(components).eval()
    clip = make_clip(1, 2, 40, 56)  # latents 5x7 -> 3x4 -> 2x2 -> 1x1
    output = backbone(clip, CAPTIONS[:1])
    assert [tuple(f.shape[-2:]) for f in output.features] == [(5, 7), (3, 4), (2, 2)]
    assert output.stride4.shape[-2:] == (10, 14)


def test_taps_match_the_stock_unet_forward_for_a_per_video_condition(components):
    """With the same condition in every frame, our walk over the blocks reproduces diffusers' own forward."""
    unet = copy.deepcopy(components.unet).eval()
    latents = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    condition = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(2))
    stock = []
    handles = [capture_output(module, stock)
               for module in (unet.transformer_in, unet.down_blocks[0], unet.down_blocks[1], *unet.up_blocks[:3])]
    with torch.no_grad():
        unet(latents, 0, encoder_hidden_states=condition)
    for handle in handles:
        handle.remove()

    with torch.no_grad():
        taps = UNetFeatureExtractor(unet)(latents, condition.repeat_interleave(3, dim=0))
    for stock_tap, tap in zip(stock, taps, strict=True):
        torch.testing.assert_close(tap, stock_tap[0] if isinstance(stock_tap, tuple) else stock_tap)


def test_unet_features_depend_on_frame_order(components):
    """Reversing a clip must not just reverse its features, or motion direction would be invisible downstream.

    The temporal attention has no position embedding; the tiny UNet's non-zero temporal convolutions (as in the
    trained UNet) are what make the features order-aware from the first down block on (f0 precedes them).
    """
    unet = copy.deepcopy(components.unet).eval()
    latents = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    condition = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2)).repeat(4, 1, 1)  # every frame
    extractor = UNetFeatureExtractor(unet)
    with torch.no_grad():
        forward = extractor(latents, condition)
        backward = extractor(latents.flip(2), condition)
    for tap_forward, tap_backward in zip(forward[1:], backward[1:], strict=True):  # [T, C, h, w], f1..f5
        difference = (tap_backward - tap_forward.flip(0)).abs().max() / tap_forward.abs().max()
        assert difference > 0.01

    for module in unet.modules():  # the stock initialisation: the same walk is blind to frame order
        if isinstance(module, TemporalConvLayer):
            torch.nn.init.zeros_(module.conv4[-1].weight)
            torch.nn.init.zeros_(module.conv4[-1].bias)
    with torch.no_grad():
        forward, backward = extractor(latents, condition), extractor(latents.flip(2), condition)
    for tap_forward, tap_backward in zip(forward, backward, strict=True):
        torch.testing.assert_close(tap_backward, tap_forward.flip(0), atol=1e-4, rtol=1e-4)


def test_condition_is_per_frame(components):
    backbone = make_backbone(components).eval()
    clip = make_clip(1, 3, 32, 32)
    conditions = []
    capture_output(backbone.frame_condition, conditions)
    backbone(clip, CAPTIONS[:1])
    clip.tensors[0, 2] = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(5))
    backbone(clip, CAPTIONS[:1])

    before, after = conditions
    assert before.shape == (3, 77, 32)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert not torch.allclose(before[2], after[2])
    assert not torch.allclose(before[0], before[2])  # frames differ, so do their conditions


def test_captions_change_features_and_share_the_clip_encoding(components):
    backbone = make_backbone(components).eval()
    clip = make_clip(1, 2, 32, 32)
    with torch.no_grad():
        encoding = backbone.encode_frames(clip.tensors, clip.mask)
        first = backbone.extract(encoding, CAPTIONS[:1])
        second = backbone.extract(encoding, CAPTIONS[1:])
        both = backbone.extract(encoding, CAPTIONS)  # K = 2 captions over one clip: (b k t) order

    assert not torch.allclose(first.features[0], second.features[0])
    for level in range(3):
        torch.testing.assert_close(both.features[level], torch.cat([first.features[level], second.features[level]]))
        assert torch.equal(both.masks[level], torch.cat([first.masks[level], second.masks[level]]))
    torch.testing.assert_close(both.stride4, torch.cat([first.stride4, second.stride4]))
    with pytest.raises(ValueError, match="3 captions for 2 clips"):
        two_clips = make_clip(2, 2, 32, 32)
        backbone.extract(backbone.encode_frames(two_clips.tensors, two_clips.mask), CAPTIONS + ["x"])


def test_lora_rank_zero_freezes_the_unet(components):
    backbone = make_backbone(components, lora_rank=0)
    trainable = {name.split(".")[0] for name, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"frame_condition", "projection", "temporal_stem"}
    assert not any("lora" in name for name, _ in backbone.named_parameters())


def test_lora_params_are_the_only_trainable_unet_params_and_all_trainables_get_gradients(components):
    backbone = make_backbone(components, lora_rank=4).train()
    unet = backbone.unet_features.unet
    unet_trainable = [name for name, p in unet.named_parameters() if p.requires_grad]
    targets = lora_target_names(components.unet, ("up_blocks.3.",))
    assert targets and all(name.endswith((".to_q", ".to_v")) for name in targets)
    assert any(name.startswith("transformer_in.") for name in targets)
    assert not any(name.startswith("up_blocks.3.") for name in targets)
    assert len(unet_trainable) == 2 * len(targets)  # lora_A and lora_B per target
    assert all(".lora_A." in name or ".lora_B." in name for name in unet_trainable)
    assert all(p.shape[0] == 4 for name, p in unet.named_parameters() if ".lora_A." in name)

    # 64x128 keeps >= 2 tokens down to the mid block: a single-token self-attention has no gradient w.r.t. to_q.
    output = backbone(make_clip(1, 2, 64, 128), CAPTIONS[:1])
    (sum(f.square().mean() for f in output.features) + output.stride4.square().mean()).backward()

    for name, p in backbone.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    lora_b_grads = [p.grad for name, p in unet.named_parameters() if ".lora_B." in name]
    assert all(grad.abs().sum() > 0 for grad in lora_b_grads)  # lora_B starts at 0, its gradient does not
    frozen = [backbone.frozen.vae, backbone.frozen.clip_vision, backbone.frozen.clip_text]
    assert not any(p.requires_grad for module in frozen for p in module.parameters())


def test_train_mode_keeps_frozen_encoders_in_eval(components):
    backbone = make_backbone(components).train()
    assert not backbone.frozen.vae.training
    assert not backbone.frozen.clip_vision.training and not backbone.frozen.clip_text.training
    assert backbone.unet_features.unet.training and backbone.frame_condition.training


def test_eval_forward_is_deterministic_and_sampling_is_not(components):
    backbone = make_backbone(components).eval()
    clip = make_clip(1, 2, 32, 32)
    with torch.no_grad():
        first, second = backbone(clip, CAPTIONS[:1]), backbone(clip, CAPTIONS[:1])
    assert all(torch.equal(a, b) for a, b in zip(first.features, second.features, strict=True))
    assert torch.equal(first.stride4, second.stride4)

    encoding = backbone.encode_frames(clip.tensors, clip.mask)
    unit = imagenet_to_unit(clip.tensors[0])  # [T, 3, H, W]
    posterior_mean = backbone.frozen.vae.encode(unit * 2 - 1).latent_dist.mean
    torch.testing.assert_close(encoding.latents[0], (posterior_mean * 0.18215).transpose(0, 1))

    backbone.frozen.sample_posterior = True
    sampled = [backbone.encode_frames(clip.tensors, clip.mask).latents for _ in range(2)]
    assert not torch.allclose(sampled[0], sampled[1])
    assert not torch.allclose(sampled[0], encoding.latents)


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(components):
    plain = make_backbone(components).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.unet_features.gradient_checkpointing = True
    clip = make_clip(1, 2, 32, 32)
    results = []
    for backbone in (plain, checkpointed):
        torch.manual_seed(0)  # the frozen UNet keeps its dropout in train mode (as the paper's)
        output = backbone(clip, CAPTIONS[:1])
        sum(f.square().mean() for f in output.features).backward()
        grads = {name: p.grad for name, p in backbone.named_parameters() if p.grad is not None}
        results.append((output.features, grads))
    for a, b in zip(results[0][0], results[1][0], strict=True):
        torch.testing.assert_close(a, b)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6)


def test_frozen_dtype_holds_weights_in_bfloat16_and_returns_float32(components):
    frozen = copy.deepcopy(components)
    backbone = VisualBackbone(frozen.unet, frozen.vae, frozen.clip_vision, frozen.clip_text, frozen.clip_tokenizer,
                              out_channels=[64, 64, 64], tcmr_channels=32, lora_rank=0, lora_alpha=1,
                              lora_dropout=0.0, clip_image_size=32, frozen_dtype=torch.bfloat16)
    assert {p.dtype for p in backbone.frozen.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in backbone.frame_condition.parameters()} == {torch.float32}
    clip = make_clip(1, 2, 32, 32)
    encoding = backbone.encode_frames(clip.tensors, clip.mask)
    assert encoding.latents.dtype == torch.float32 and encoding.image_tokens.dtype == torch.float32
    reference = make_backbone(components).encode_frames(clip.tensors, clip.mask)
    torch.testing.assert_close(encoding.latents, reference.latents, rtol=0.05, atol=0.05)


def test_build_backbone_wires_the_tiny_config(components):
    cfg = read_config("refshapes_tiny.yaml")
    backbone = build_backbone(cfg, SimpleNamespace(**{**vars(components), "unet": copy.deepcopy(components.unet)}))
    options = cfg["model"]["backbone"]
    assert backbone.num_channels == options["out_channels"]
    assert backbone.stride4_channels == options["tcmr_channels"]
    lora_a = [p for name, p in backbone.named_parameters() if ".lora_A." in name]
    assert lora_a and all(p.shape[0] == options["unet_lora_rank"] for p in lora_a)

    cfg["model"]["backbone"]["clip_image_size"] = 224
    with pytest.raises(ValueError, match="clip_image_size"):
        build_backbone(cfg, components)
    cfg["model"]["backbone"].update(clip_image_size=32, frozen_dtype="float64")
    with pytest.raises(ValueError, match="frozen_dtype"):
        build_backbone(cfg, components)


def test_full_size_backbone_on_meta_has_the_paper_channels():
    backbone = build_backbone(read_config("ytvos_hcd.yaml"), build_pretrained_on_meta())
    assert backbone.unet_features.tap_channels == [320, 320, 640, 1280, 1280, 640]
    assert backbone.projection.in_channels == [960, 1600, 1920]
    widths = [(p[0].in_channels, p[0].out_channels, p[1].out_channels) for p in backbone.projection.projections]
    assert widths == [(960, 512, 256), (1600, 1024, 512), (1920, 1024, 1024)]
    assert backbone.num_channels == [256, 512, 1024] and backbone.stride4_channels == 128
    image_proj = backbone.frame_condition.image_proj
    assert (image_proj.fc1.in_features, image_proj.fc1.out_features) == (1280, 1024)
    assert backbone.frame_condition.cross_attention.attention.num_heads == 16
    assert backbone.frozen.text_length == 77
    lora_a = [p for name, p in backbone.named_parameters() if ".lora_A." in name]
    assert lora_a and all(p.shape[0] == 16 and p.requires_grad for p in lora_a)


def test_clip_pixel_values_resize_the_short_side_and_crop_the_centre():
    image = torch.zeros(1, 3, 32, 64)
    image[..., 16:48] = 1.0  # only the centre 32 columns are white
    pixels = clip_pixel_values(image, 32)
    white = (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels[0], white.view(3, 1, 1).expand(3, 32, 32))

    grey = torch.full((2, 3, 48, 40), 0.5)
    expected = ((0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).view(1, 3, 1, 1).expand(2, 3, 16, 16)
    torch.testing.assert_close(clip_pixel_values(grey, 16), expected)


def test_imagenet_to_unit_maps_zero_padding_to_the_mean_colour():
    unit = imagenet_to_unit(torch.zeros(2, 3, 4, 4))
    torch.testing.assert_close(unit[1, :, 2, 2], torch.tensor(IMAGENET_MEAN))


def test_residual_mlp_and_cross_attention_structure():
    mlp = ResidualMLP(3, 2)
    with torch.no_grad():
        mlp.fc1.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
        mlp.fc1.bias.zero_()
        mlp.fc2.weight.copy_(torch.eye(2))
        mlp.fc2.bias.fill_(1.0)
    torch.testing.assert_close(mlp(torch.tensor([[1.0, 1.0, 5.0]])), torch.tensor([[3.0, 5.0]]))  # h + (h + 1)

    attention = TextImageCrossAttention(32)
    assert attention.attention.num_heads == 1 and attention.attention.in_proj_bias is None
    assert attention.attention.out_proj.bias is None
    assert TextImageCrossAttention(1024).attention.num_heads == 16
    text, image = torch.randn(4, 7, 32), torch.randn(4, 5, 32)
    out = attention(text, image)
    assert out.shape == (4, 7, 32)
    torch.testing.assert_close(out.mean(-1), torch.zeros(4, 7), atol=1e-5, rtol=0)  # ends in a LayerNorm


def test_projection_hidden_widths():
    assert hidden_channels([256, 512, 1024]) == [512, 1024, 1024]
    assert hidden_channels([64, 64, 64]) == [64, 64, 64]


def test_temporal_stem_single_residual_and_clip_separation():
    torch.manual_seed(0)
    stem = TemporalStem(32)
    frames = torch.rand(2, 3, 3, 30, 18)
    out = stem(frames)
    assert out.shape == (6, 32, 8, 5)
    identity = stem.stem(frames.flatten(0, 1))
    torch.testing.assert_close(out, identity)  # the zero-initialised last conv: output = identity, not 2x

    torch.nn.init.normal_(stem.temporal.conv4[-1].weight)
    changed = frames.clone()
    changed[0, 0] = torch.rand(3, 30, 18)
    before, after = stem(frames), stem(changed)
    assert not torch.allclose(before[1], after[1])  # frame 1 of clip 0 sees frame 0 through time
    assert torch.equal(before[3:], after[3:])  # clip 1 is untouched
    with pytest.raises(ValueError, match="multiple of 8"):
        TemporalStem(20)
