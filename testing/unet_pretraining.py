"""Pretraining of the tiny UNet as a text-conditioned video denoiser, the way ModelScope's UNet was trained.

The tiny UNet of ``testing/tiny_weights.py`` is random, so its taps (``models/backbone/unet_features.py``) are not
the features of a text-to-video model. This trains it on the latents of the (pretrained) tiny VAE with the DDPM
objective: noise a clip's latents at a uniformly drawn timestep of the scheduler, condition on the frozen text
encoder's tokens of a caption of the video (empty for a fraction of the samples, classifier-free-guidance style),
and regress the noise. The VAE and the text encoder are frozen, so their outputs are computed once up front
(``encode_clips``, ``encode_captions``) and the loop runs only the UNet.
"""
import random
from collections.abc import Sequence

import torch
from torch.nn import functional as F

CAPTION_SEPARATOR = ", "


def encode_clips(vae, clips: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Frozen VAE latents as HCD takes them (posterior mean x scaling factor, ``FrozenEncoders.encode_latents``).

    clips: [N, T, 3, H, W] in [0, 1]  ->  [N, 4, T, H/8, W/8]
    """
    frames = clips.flatten(0, 1) * 2.0 - 1.0
    with torch.no_grad():
        latents = torch.cat([vae.encode(part).latent_dist.mean for part in frames.split(chunk)])
    latents = latents * vae.config.scaling_factor
    return latents.unflatten(0, clips.shape[:2]).transpose(1, 2).contiguous()


def encode_captions(text_encoder, tokenizer, captions: list[str], chunk: int = 256) -> torch.Tensor:
    """Frozen text-encoder tokens, padded/truncated to its length as ``FrozenEncoders.encode_text`` does.

    captions: N strings  ->  [N, 77, D] (``last_hidden_state``)
    """
    length = text_encoder.config.max_position_embeddings
    parts = []
    with torch.no_grad():
        for start in range(0, len(captions), chunk):
            tokens = tokenizer(captions[start:start + chunk], padding="max_length", max_length=length,
                               truncation=True, return_tensors="pt")
            parts.append(text_encoder(input_ids=tokens.input_ids).last_hidden_state)
    return torch.cat(parts)


def caption_variants(expressions: Sequence[str], max_join: int, count: int, rng: random.Random) -> list[str]:
    """Captions of one video: its expressions, plus with ``max_join`` > 1 ``count`` joins of 2..max_join
    distinct ones (``"the red circle, the blue square moving up"``), so that a caption can name several objects."""
    captions = list(expressions)
    most = min(max_join, len(expressions))
    if most >= 2:
        captions += [CAPTION_SEPARATOR.join(rng.sample(list(expressions), rng.randint(2, most)))
                     for _ in range(count)]
    return captions


def denoising_loss(unet, scheduler, latents: torch.Tensor, condition: torch.Tensor, noise: torch.Tensor,
                   timesteps: torch.Tensor) -> torch.Tensor:
    """DDPM epsilon-prediction MSE through diffusers' ``UNet3DConditionModel.forward``.

    latents, noise: [B, 4, T, h, w]; condition: [B, 77, D] (one caption per clip); timesteps: [B] int64.
    """
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, encoder_hidden_states=condition).sample
    return F.mse_loss(prediction, noise)


def sample_batch(latents: torch.Tensor, text: torch.Tensor, clip_captions: Sequence[Sequence[int]],
                 empty: torch.Tensor, batch_size: int, caption_dropout: float, num_timesteps: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One training batch: clips, their captions' tokens (``empty`` with probability ``caption_dropout``),
    noise and uniform timesteps in [0, num_timesteps).

    latents: [N, 4, T, h, w]; text: [M, 77, D]; clip_captions[n]: the rows of ``text`` that caption clip n;
    empty: [77, D]  ->  latents [B, 4, T, h, w], condition [B, 77, D], noise like latents, timesteps [B]
    """
    clips = torch.randint(len(latents), (batch_size,), generator=generator).tolist()
    rows = [clip_captions[n][torch.randint(len(clip_captions[n]), (1,), generator=generator).item()]
            for n in clips]
    dropped = torch.rand(batch_size, generator=generator) < caption_dropout
    condition = torch.where(dropped[:, None, None], empty, text[rows])
    batch = latents[clips]
    noise = torch.randn(batch.shape, generator=generator)
    timesteps = torch.randint(num_timesteps, (batch_size,), generator=generator)
    return batch, condition, noise, timesteps


def pretrain_unet(unet, scheduler, latents: torch.Tensor, text: torch.Tensor,
                  clip_captions: Sequence[Sequence[int]], empty: torch.Tensor, steps: int, batch_size: int = 4,
                  lr: float = 1e-3, caption_dropout: float = 0.1, max_grad_norm: float = 1.0,
                  seed: int = 0) -> list[float]:
    """Train ``unet`` (diffusers ``UNet3DConditionModel``) in place as a text-conditioned video denoiser.

    ``scheduler`` (diffusers, e.g. ``DDIMScheduler``) gives the noise schedule and ``add_noise``. Arguments as in
    ``sample_batch``. Adam with a cosine decay of the learning rate to zero and gradient-norm clipping. Returns
    the loss of every step; the UNet is left in eval mode.
    """
    if any(not captions for captions in clip_captions) or len(clip_captions) != len(latents):
        raise ValueError(f"need at least one caption for each of the {len(latents)} clips, got "
                         f"{[len(captions) for captions in clip_captions]}")
    generator = torch.Generator().manual_seed(seed)
    num_timesteps = scheduler.config.num_train_timesteps
    parameters = [parameter for parameter in unet.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    unet.train()
    losses = []
    for _ in range(steps):
        batch = sample_batch(latents, text, clip_captions, empty, batch_size, caption_dropout, num_timesteps,
                             generator)
        loss = denoising_loss(unet, scheduler, *batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    unet.eval()
    return losses
