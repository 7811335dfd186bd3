"""The tiny VAE's reconstruction PSNR and unit-variance scaling factor (testing/vae_pretraining.py)."""
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from testing.vae_pretraining import random_crops, reconstruction_psnr, unit_tensor, unit_variance_scaling_factor


class StubVAE:
    """Latents = ``gain`` x the image in [-1, 1]; the reconstruction is the image shifted by ``offset``."""

    def __init__(self, gain: float = 1.0, offset: float = 0.0):
        self.gain, self.offset = gain, offset

    def encode(self, batch: torch.Tensor):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=self.gain * batch))

    def decode(self, latents: torch.Tensor):
        return SimpleNamespace(sample=latents / self.gain + self.offset)


def images(count: int = 3, size: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(60, 200, size=(size, size, 3), dtype=np.uint8) for _ in range(count)]


def test_psnr_of_a_known_error():
    # An offset of 0.1 in [-1, 1] is 0.05 on [0, 1] pixels: MSE 0.0025, PSNR 26.02 dB.
    assert reconstruction_psnr(StubVAE(offset=0.1), images()) == pytest.approx(10 * math.log10(1 / 0.0025))


def test_scaling_factor_gives_unit_variance():
    pictures = images()
    factor = unit_variance_scaling_factor(StubVAE(gain=3.0), pictures)
    latents = torch.cat([3.0 * unit_tensor(picture).flatten() for picture in pictures])
    assert (factor * latents).std().item() == pytest.approx(1.0)


def test_unit_tensor_and_crops_are_in_the_vae_range():
    picture = np.array([[[0, 255, 127]]], dtype=np.uint8)
    assert unit_tensor(picture).flatten().tolist() == pytest.approx([-1.0, 1.0, 127 / 127.5 - 1])
    crops = random_crops(images(size=20), batch_size=4, crop=8, rng=random.Random(0))
    assert crops.shape == (4, 3, 8, 8) and crops.min() >= -1 and crops.max() <= 1
