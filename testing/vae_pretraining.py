"""Pretraining of the tiny VAE, so that the demo's latents carry the image like a real pretrained VAE's do.

The tiny components of ``testing/tiny_weights.py`` are random. A random 4-channel VAE bottleneck at stride 8 keeps
almost nothing of the image (a linear probe recovers about 10 % of the cells' colour variance on RefShapes), so
nothing downstream of it could learn to tell a red circle from a blue one. The real ``weight/vae`` is an
autoencoder trained on images; this trains the tiny one the same way (reconstruction + a small KL term, no
labels) on frames of a dataset, for a few hundred steps on a CPU.

Its ``scaling_factor`` is then set as Stable Diffusion's 0.18215 was chosen for the real VAE: so that the scaled
latents have unit variance. That is the scale the UNet's noise schedule was designed for; with the tiny VAE's
latents at SD's factor (standard deviation about 0.3) a denoiser pretrained on them would see mostly noise.
"""
import math
import random

import numpy as np
import torch
from torch.nn import functional as F


def unit_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> [1, 3, H, W] in [-1, 1], the VAE's input range."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1


def random_crops(images: list[np.ndarray], batch_size: int, crop: int, rng: random.Random) -> torch.Tensor:
    """A batch of random ``crop``-sized RGB crops in [-1, 1]: [batch_size, 3, crop, crop]."""
    crops = []
    for _ in range(batch_size):
        image = images[rng.randrange(len(images))]
        top = rng.randrange(image.shape[0] - crop + 1)
        left = rng.randrange(image.shape[1] - crop + 1)
        crops.append(unit_tensor(image[top : top + crop, left : left + crop]))
    return torch.cat(crops)


def reconstruction_psnr(vae, images: list[np.ndarray]) -> float:
    """PSNR (dB, peak 1 on [0, 1] pixels) of ``vae``'s reconstructions of uint8 [H, W, 3] ``images`` through the
    posterior mean, the mean squared error taken over all pixels of all images."""
    squared_error, pixels = 0.0, 0
    with torch.no_grad():
        for image in images:
            batch = unit_tensor(image)
            reconstruction = vae.decode(vae.encode(batch).latent_dist.mean).sample.clamp(-1, 1)
            squared_error += ((reconstruction - batch) / 2).pow(2).sum().item()
            pixels += batch.numel()
    return 10 * math.log10(pixels / squared_error)


def unit_variance_scaling_factor(vae, images: list[np.ndarray]) -> float:
    """1 / standard deviation of the posterior means of uint8 [H, W, 3] ``images``: the ``scaling_factor`` that gives
    latents of unit variance."""
    with torch.no_grad():
        means = torch.cat([vae.encode(unit_tensor(image)).latent_dist.mean.flatten() for image in images])
    return 1.0 / means.std().item()


def pretrain_vae(vae, images: list[np.ndarray], steps: int, batch_size: int = 8, crop: int = 64,
                 lr: float = 1e-3, kl_weight: float = 1e-6, seed: int = 0) -> list[float]:
    """Train ``vae`` (diffusers ``AutoencoderKL``) in place as an autoencoder on uint8 [H, W, 3] ``images``.

    Returns the reconstruction loss of every step. The learning rate follows a cosine decay to zero.
    """
    if min(min(image.shape[:2]) for image in images) < crop:
        raise ValueError(f"every image must be at least {crop}x{crop} pixels to take crops from it")
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    vae.train()
    losses = []
    for _ in range(steps):
        batch = random_crops(images, batch_size, crop, rng)
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.mse_loss(reconstruction, batch)
        optimizer.zero_grad()
        (loss + kl_weight * posterior.kl().mean()).backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    vae.eval()
    return losses
