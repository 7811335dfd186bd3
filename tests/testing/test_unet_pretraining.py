"""Pretraining of the tiny UNet as a text-conditioned video denoiser (testing/unet_pretraining.py, its script)."""
import copy
import json
import random
import shutil
import sys

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from models.pretrained import load_pretrained
from scripts import pretrain_tiny_unet
from testing.unet_pretraining import (caption_variants, denoising_loss, encode_captions, encode_clips,
                                     pretrain_unet, sample_batch)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread beats two on a shared, busy CPU


def test_denoising_loss_decreases_on_a_fixed_batch(tiny_weights):
    unet = UNet3DConditionModel.from_pretrained(tiny_weights / "unet")
    scheduler = DDIMScheduler.from_pretrained(tiny_weights / "scheduler")
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 2, 8, 8, generator=generator)  # two synthetic clips of 2 frames
    text = torch.randn(3, 77, unet.config.cross_attention_dim, generator=generator)
    fixed = sample_batch(latents, text, [[0, 1], [2]], text[0], 2, 0.0, 1000, generator)
    with torch.no_grad():
        before = denoising_loss(unet, scheduler, *fixed).item()
    losses = pretrain_unet(unet, scheduler, latents, text, [[0, 1], [2]], text[0], steps=6, batch_size=2, lr=2e-3)
    with torch.no_grad():
        after = denoising_loss(unet, scheduler, *fixed).item()
    assert len(losses) == 6 and not unet.training
    assert after < 0.8 * before


def test_sample_batch_drops_captions_and_keeps_each_clip_to_its_own():
    latents = torch.arange(3.0)[:, None, None, None, None].expand(3, 4, 2, 2, 2)
    text = torch.arange(1.0, 4.0)[:, None, None].expand(3, 77, 8)
    empty = torch.zeros(77, 8)
    generator = torch.Generator().manual_seed(0)
    batch, condition, noise, timesteps = sample_batch(latents, text, [[0], [1], [2]], empty, 64, 0.25, 10, generator)
    assert batch.shape == noise.shape == (64, 4, 2, 2, 2) and condition.shape == (64, 77, 8)
    clip, caption = batch[:, 0, 0, 0, 0], condition[:, 0, 0]
    dropped = caption == 0
    assert 0 < dropped.sum() < 32 and torch.equal(caption[~dropped], clip[~dropped] + 1)
    assert timesteps.min() >= 0 and timesteps.max() < 10


def test_caption_variants_join_distinct_expressions():
    expressions = ["the red circle", "the blue square", "the green star"]
    assert caption_variants(expressions, 1, 5, random.Random(0)) == expressions
    variants = caption_variants(expressions, 3, 5, random.Random(0))
    assert variants[:3] == expressions and len(variants) == 8
    for joined in variants[3:]:
        parts = joined.split(", ")
        assert 2 <= len(parts) <= 3 and len(set(parts)) == len(parts) and set(parts) <= set(expressions)


def test_encoders_match_the_backbone_conventions(tiny_weights):
    text_encoder = CLIPTextModel.from_pretrained(tiny_weights / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(tiny_weights / "tokenizer")
    text = encode_captions(text_encoder, tokenizer, ["the red circle", ""], chunk=1)
    assert text.shape == (2, 77, text_encoder.config.hidden_size)
    vae = AutoencoderKL.from_pretrained(tiny_weights / "vae")
    clips = torch.rand(2, 3, 3, 64, 64)
    latents = encode_clips(vae, clips, chunk=4)
    assert latents.shape == (2, 4, 3, 8, 8)
    with torch.no_grad():
        expected = vae.encode(clips[1, 2:3] * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(latents[1, :, 2], expected[0], atol=1e-5, rtol=1e-4)


def test_script_replaces_the_unet_once_and_it_loads(tiny_weights, refshapes_root, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    before = copy.deepcopy(UNet3DConditionModel.from_pretrained(weights / "unet").state_dict())
    argv = ["pretrain_tiny_unet.py", "--weights", str(weights), "--data_root", str(refshapes_root), "--steps", "2",
            "--clips", "3", "--frames", "2", "--size", "64", "--batch_size", "2", "--max_join", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    pretrain_tiny_unet.main()
    record = json.loads((weights / "unet" / "pretraining.json").read_text())
    assert record["steps"] == 2 and record["clips"] == 3 and record["split"] == "train"
    assert record["first_loss"] > 0 and len(record["loss_curve"]) == 2
    unet = load_pretrained(weights).unet
    assert any(not torch.equal(value, before[name]) for name, value in unet.state_dict().items())

    files = {path: path.read_bytes() for path in (weights / "unet").iterdir()}
    pretrain_tiny_unet.main()
    assert "already pretrained" in capsys.readouterr().out
    assert {path: path.read_bytes() for path in (weights / "unet").iterdir()} == files
