"""Times multi-scale deformable attention at the paper's encoder shapes.

N = 5 frames, levels 45x80, 23x40, 12x20, 6x10 (S = 4820 tokens, all of them queries), 8 heads x 32 channels,
4 points, uniform random locations. Rows: our default dispatch (``ms_deform_attn``, HCD_MSDA_BACKEND=auto),
the pure-PyTorch fallback, the classic grid_sample formulation, our compiled kernel, on CUDA the Triton kernels,
and the peer package ``torch_ms_deform_attn`` when installed. Times are medians over --repeat runs after one warm-up.

    .venv/bin/python -m benchmarks.bench_msda --backward --repeat 5 --json
"""
import argparse
import json
import os
import statistics
import time

import torch


from models.ops import ms_deform_attn, ms_deform_attn_grid_sample, ms_deform_attn_pytorch
from models.ops.kernels import cpu_kernel, cuda_kernel, triton_module, triton_works_on
from models.ops.ms_deform_attn_function import BACKEND_ENV, selected_backend

LEVELS = [(45, 80), (23, 40), (12, 20), (6, 10)]
FRAMES, HEADS, CHANNELS, POINTS = 5, 8, 32, 4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with the timings and speed-ups as the last line")
    parser.add_argument("--repeat", type=int, default=5, metavar="K",
                        help="timed runs per implementation and pass; the median is reported (default 5)")
    parser.add_argument("--backward", action="store_true",
                        help="also time the backward pass (gradients of value, locations and weights)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="device of the tensors (default cpu); on cuda the compiled row is the CUDA extension")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def make_inputs(device: torch.device, frames: int = FRAMES):
    """The encoder's op inputs for ``frames`` frames: value, shapes, starts, locations, weights."""
    generator = torch.Generator().manual_seed(0)
    shapes = torch.tensor(LEVELS, dtype=torch.long)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    keys = int((shapes[:, 0] * shapes[:, 1]).sum())
    value = torch.randn(frames, keys, HEADS, CHANNELS, generator=generator)
    locations = torch.rand(frames, keys, HEADS, len(LEVELS), POINTS, 2, generator=generator)
    weights = torch.rand(frames, keys, HEADS, len(LEVELS) * POINTS, generator=generator).softmax(-1)
    weights = weights.view(frames, keys, HEADS, len(LEVELS), POINTS)
    return [t.to(device) for t in (value, shapes, starts, locations, weights)]


def with_backend(name: str):
    """ms_deform_attn with HCD_MSDA_BACKEND forced to `name` for the duration of each call."""
    def run(*inputs):
        previous = os.environ.get(BACKEND_ENV)
        os.environ[BACKEND_ENV] = name
        try:
            return ms_deform_attn(*inputs)
        finally:
            if previous is None:
                del os.environ[BACKEND_ENV]
            else:
                os.environ[BACKEND_ENV] = previous
    return run


def implementations(device: torch.device) -> dict:
    impls = {"pytorch": ms_deform_attn_pytorch, "grid_sample": ms_deform_attn_grid_sample}
    compiled = cuda_kernel() if device.type == "cuda" else cpu_kernel()
    if compiled is not None:
        impls["cpp"] = with_backend("cpp")
    if device.type == "cuda" and triton_module() is not None:
        impls["triton"] = with_backend("triton")
    try:
        import torch_ms_deform_attn
    except ImportError:
        pass
    else:
        impls["peer"] = lambda *inputs: torch_ms_deform_attn.ms_deform_attn(*inputs, im2col_step=64)
    return impls


def default_backend_name(device: torch.device) -> str:
    """Which row ms_deform_attn's own dispatch amounts to."""
    backend = selected_backend()
    if backend in ("pytorch", "triton"):
        return backend
    if (cuda_kernel() if device.type == "cuda" else cpu_kernel()) is not None:
        return "cpp"
    return "triton" if device.type == "cuda" and triton_works_on(device) else "pytorch"


def median_ms(fn, repeat: int, device: torch.device) -> float:
    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1000.0

    timed()  # warm-up: caches, allocator, lazy initialisation
    return statistics.median(timed() for _ in range(repeat))


def time_backward(impl, inputs, repeat: int, device: torch.device) -> float:
    value, shapes, starts, locations, weights = inputs
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    out = impl(leaves[0], shapes, starts, leaves[1], leaves[2])
    grad = torch.randn_like(out)
    return median_ms(lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True), repeat, device)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return round(numerator / denominator, 2)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_msda.py: --device cuda but torch.cuda.is_available() is False.")
    inputs = make_inputs(device)
    impls = implementations(device)
    forward_ms, backward_ms = {}, {}
    with torch.no_grad():
        for name, impl in impls.items():
            forward_ms[name] = round(median_ms(lambda: impl(*inputs), args.repeat, device), 1)
    if args.backward:
        for name, impl in impls.items():
            backward_ms[name] = round(time_backward(impl, inputs, args.repeat, device), 1)

    default = default_backend_name(device)
    print(f"multi-scale deformable attention, {device.type}, {torch.get_num_threads()} threads: N={FRAMES}, "
          f"levels={LEVELS}, S=Lq={inputs[0].shape[1]}, M={HEADS}, D={CHANNELS}, P={POINTS}; "
          f"median of {args.repeat}; default dispatch = {default}")
    print(f"{'implementation':<14}{'forward ms':>12}{'backward ms':>13}")
    for name in impls:
        backward = f"{backward_ms[name]:>13.1f}" if name in backward_ms else f"{'-':>13}"
        print(f"{name + (' *' if name == default else ''):<14}{forward_ms[name]:>12.1f}{backward}")
    if args.json:
        summary = {
            "device": device.type,
            "threads": torch.get_num_threads(),
            "default_backend": default,
            "speedup_vs_grid_sample": ratio(forward_ms["grid_sample"], forward_ms[default]),
            "speedup_vs_peer": ratio(forward_ms.get("peer"), forward_ms[default]),
            "backward_speedup_vs_grid_sample": ratio(backward_ms.get("grid_sample"), backward_ms.get(default)),
            "backward_speedup_vs_peer": ratio(backward_ms.get("peer"), backward_ms.get(default)),
            "forward_ms": forward_ms,
            "backward_ms": backward_ms,
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
