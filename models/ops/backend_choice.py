"""Choosing the faster of several multi-scale deformable attention backends by timing each once.

On a GPU with both the CUDA extension and the Triton kernels, which one is faster depends on the GPU and the
shapes (on an H200 at the paper's encoder shapes Triton was 1.2x faster forward and 1.7x backward; issue 21), so
``auto`` dispatch times the candidates on the first call of each *shape family* on a device and keeps the faster
one for every later call of that family. A family is what decides the kernels' work split: the device, the
dtypes, heads, channels, levels and points, whether gradients are needed, and the number of query and key rows
rounded to a power of two.
"""
import statistics
import time
from collections.abc import Callable, Hashable

import torch

TIMED_RUNS = 3  # after one warm-up run (Triton's JIT compiles there); the median is kept


class FastestBackend:
    """Per key, the candidate that ``measure`` found fastest; each (key, candidates) pair is measured once."""

    def __init__(self):
        self.choices: dict[tuple, str] = {}

    def choose(self, key: Hashable, names: tuple[str, ...], measure: Callable[[str], float]) -> str:
        """The name in ``names`` with the smallest ``measure(name)`` (seconds); ties go to the earlier name. A
        single candidate is returned without measuring."""
        if len(names) == 1:
            return names[0]
        if (key, names) not in self.choices:
            seconds = {name: measure(name) for name in names}
            self.choices[key, names] = min(names, key=seconds.__getitem__)
        return self.choices[key, names]


def power_of_two_bucket(count: int) -> int:
    """The exponent of the power of two at or above ``count`` (0 for 0 and 1)."""
    return max(count - 1, 0).bit_length()


def shape_family(value: torch.Tensor, sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                 needs_grad: bool) -> tuple:
    """The key under which a timing holds: value [N, S, M, D], locations [N, Lq, M, L, P, 2]."""
    n, keys, heads, channels = value.shape
    queries, levels, points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    return (str(value.device), value.dtype, sampling_locations.dtype, attention_weights.dtype, heads, channels,
            levels, points, needs_grad, power_of_two_bucket(n * queries), power_of_two_bucket(n * keys))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(run: Callable[[], object], device: torch.device, repeats: int = TIMED_RUNS) -> float:
    """Median wall seconds of ``run()`` over ``repeats`` runs after one warm-up, the device synchronised around
    each."""
    run()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def forward_and_backward(function: Callable, inputs: list[torch.Tensor]) -> Callable[[], None]:
    """A run of ``function`` on copies of value, locations and weights (inputs 0, 3, 4) with the backward pass of
    their gradients, leaving the caller's tensors and graph untouched."""
    def run():
        leaves = [inputs[index].detach().requires_grad_() for index in (0, 3, 4)]
        with torch.enable_grad():
            out = function(leaves[0], inputs[1], inputs[2], leaves[1], leaves[2])
            torch.autograd.grad(out, leaves, torch.ones_like(out))
    return run
