"""Per-item random generators, so that a sample depends only on (seed, epoch, index).

Clip sampling and augmentation draw from ``item_rng(seed, epoch, index)`` instead of global state, so the
data of an epoch is the same whatever the number of workers, and a run resumed at epoch ``e`` sees
exactly the samples the interrupted run would have seen.
"""
import random

import numpy as np


def item_rng(seed: int, epoch: int, index: int) -> random.Random:
    """A ``random.Random`` seeded from ``(seed, epoch, index)`` (independent streams per item)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2)
    return random.Random(int(state[0]) << 32 | int(state[1]))


class EpochSeeded:
    """Mixin for datasets whose items are drawn from ``item_rng``; the engine calls ``set_epoch``."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng_for(self, index: int) -> random.Random:
        return item_rng(self.seed, self.epoch, index)
