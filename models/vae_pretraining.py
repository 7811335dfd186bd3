"""Pretraining of the tiny VAE, so that the demo's latents carry the image like a real pretrained VAE's do.

The tiny components of ``models/tiny_weights.py`` are random. A random 4-channel VAE bottleneck at stride 8 keeps
almost nothing of the image (a linear probe recovers about 10 % of the cells' colour variance on RefShapes), so
nothing downstream of it could learn to tell a red circle from a blue one. The real ``weight/vae`` is an
autoencoder trained on images; this trains the tiny one the same way (reconstruction + a small KL term, no
labels) on frames of a dataset, for a few hundred steps on a CPU.
"""
import random

import numpy as np
import torch
from torch.nn import functional as F


def random_crops(images: list[np.ndarray], batch_size: int, crop: int, rng: random.Random) -> torch.Tensor:
    """A batch of random ``crop``-sized RGB crops in [-1, 1]: [batch_size, 3, crop, crop]."""
    crops = []
    for _ in range(batch_size):
        image = images[rng.randrange(len(images))]
        top = rng.randrange(image.shape[0] - crop + 1)
        left = rng.randrange(image.shape[1] - crop + 1)
        crops.append(torch.from_numpy(image[top : top + crop, left : left + crop]).permute(2, 0, 1))
    return torch.stack(crops).float() / 127.5 - 1


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
