"""``ms_deform_attn``: the multi-scale deformable attention operator and its backend dispatch.

Backends, chosen per call from the tensors' device:

- CUDA tensors: the available ones among the CUDA extension (``src/cuda``; installed with ``cd models/ops && python
  setup.py build install``, or compiled on first use when nvcc is found) and the Triton kernels
  (:mod:`models.ops.triton_impl`, no compile step: Triton ships with CUDA builds of torch; used once they pass a
  one-off self-check on the device). With both, the first call of each shape family on a device times the two and
  later calls of the family take the faster (:mod:`models.ops.backend_choice`). With neither, pure PyTorch.
- CPU tensors: our C++ kernel (``src/cpu/ms_deform_attn_cpu.cpp``, parallel over queries and heads), compiled on
  first use with ``torch.utils.cpp_extension.load`` and cached; if no compiler is available, pure PyTorch
  with a single warning.
- Pure PyTorch (:func:`models.ops.pytorch_impl.ms_deform_attn_pytorch`) everywhere else.

The environment variable ``HCD_MSDA_BACKEND`` overrides the choice:

- ``auto`` (default): as above.
- ``pytorch``: always the pure-PyTorch implementation (nothing is compiled or imported).
- ``cpp``: always the compiled kernel for the tensors' device; raises RuntimeError if it is unavailable.
- ``triton``: always the Triton kernels; raises RuntimeError if Triton is not installed. They run on CUDA tensors,
  and on CPU tensors only in Triton's interpreter (``TRITON_INTERPRET=1`` set before the first import).

Precision: every backend computes in float32 (float64 stays float64) and returns the dtype of ``value``. The Triton
kernels read float16/bfloat16 ``value`` and ``attention_weights`` as they are, so a bf16 value (the projection's
output under autocast) is not first copied to float32 in memory; sampling locations always reach them in float32
at least (a bf16 location is off by up to 2^-9 of the map, a third of a pixel on a 160-wide level). The CUDA
extension and the CPU kernels take float32/float64 only (their kernels accumulate in the input type), so the
dispatcher casts for them. No backend has an ``im2col_step`` limit on the batch; all support autograd (first
order).
"""
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from models.ops import backend_choice, kernels
from models.ops.pytorch_impl import ms_deform_attn_pytorch

BACKEND_ENV = "HCD_MSDA_BACKEND"
BACKENDS = ("auto", "pytorch", "cpp", "triton")


@dataclass(frozen=True)
class Backend:
    """One implementation with ``ms_deform_attn``'s signature; ``reads_half``: it takes float16/bfloat16 value and
    attention weights directly."""

    name: str
    function: Callable
    reads_half: bool = False


PYTORCH = Backend("pytorch", ms_deform_attn_pytorch)
_FASTEST = backend_choice.FastestBackend()


@torch.compiler.disable  # the dispatch reads the environment and may time backends: never part of a graph
def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention sampling.

    Args:
        value: [N, S, M, D], S = sum_l H_l*W_l (levels flattened row-major and concatenated), M heads.
        spatial_shapes: long [L, 2], (H_l, W_l) per level.
        level_start_index: long [L], exclusive cumulative sum of H_l*W_l.
        sampling_locations: [N, Lq, M, L, P, 2], normalised (x, y); [0, 1] covers the level's image and
            samples outside it read zeros (bilinear, pixel centre at (i + 0.5) / W).
        attention_weights: [N, Lq, M, L, P], usually softmaxed over L*P.

    Returns:
        [N, Lq, M*D] in ``value``'s dtype: sum over levels and points of weight * bilinear sample.
    """
    check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    device = value.device
    inputs = [value, spatial_shapes.to(device=device, dtype=torch.long).contiguous(),
              level_start_index.to(device=device, dtype=torch.long).contiguous(), sampling_locations,
              attention_weights]
    # Under autocast the pure path's matmuls would silently drop to fp16/bf16: keep them in the compute dtype.
    no_autocast = (torch.autocast(device_type=device.type, enabled=False)
                   if torch.amp.is_autocast_available(device.type) else contextlib.nullcontext())
    with no_autocast:
        return run(choose(available_backends(device), inputs), inputs)


def run(backend: Backend, inputs: list[torch.Tensor]) -> torch.Tensor:
    """``backend`` on ``inputs`` (value, shapes, starts, locations, weights) in the dtypes it takes -> [N, Lq, M*D]
    in value's dtype."""
    value, shapes, starts, locations, weights = inputs
    out_dtype = value.dtype
    value, locations, weights = backend_inputs(backend, value, locations, weights)
    return backend.function(value, shapes, starts, locations, weights).to(out_dtype)


def backend_inputs(backend: Backend, value: torch.Tensor, locations: torch.Tensor,
                   weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(value, locations, weights) contiguous, in the dtypes ``backend`` computes from (module docstring)."""
    compute = torch.float64 if value.dtype == torch.float64 else torch.float32
    if backend.reads_half:
        # A float32 weight is passed as it is too: casting it down would cost more memory traffic than it saves.
        return (value.contiguous(), locations.to(torch.promote_types(locations.dtype, torch.float32)).contiguous(),
                weights.contiguous())
    return value.to(compute).contiguous(), locations.to(compute).contiguous(), weights.to(compute).contiguous()


def choose(candidates: list[Backend], inputs: list[torch.Tensor]) -> Backend:
    """The only candidate, or the fastest on this call's shape family (timed on ``inputs`` the first time)."""
    if len(candidates) == 1:
        return candidates[0]
    value, _, _, locations, weights = inputs
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (value, locations, weights))
    by_name = {backend.name: backend for backend in candidates}

    def measure(name: str) -> float:
        return time_backend(by_name[name], inputs, needs_grad)

    key = backend_choice.shape_family(value, locations, weights, needs_grad)
    return by_name[_FASTEST.choose(key, tuple(by_name), measure)]


def time_backend(backend: Backend, inputs: list[torch.Tensor], needs_grad: bool) -> float:
    """Seconds of one call of ``backend`` on ``inputs`` (forward, and backward when ``needs_grad``)."""
    if needs_grad:
        call = backend_choice.forward_and_backward(lambda *args: run(backend, list(args)), inputs)
    else:
        def call():
            with torch.no_grad():
                run(backend, inputs)
    return backend_choice.time_call(call, inputs[0].device)


def chosen_backends() -> dict[str, str]:
    """The choices ``auto`` has made by timing so far: {shape family as text: backend name}."""
    return {str(key): name for key, name in _FASTEST.choices.items()}


def selected_backend() -> str:
    """The value of ``HCD_MSDA_BACKEND`` (default ``auto``), validated."""
    backend = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={backend!r} is not a multi-scale deformable attention backend; "
                         f"use one of {', '.join(BACKENDS)}.")
    return backend


def available_backends(device: torch.device) -> list[Backend]:
    """The backends ``HCD_MSDA_BACKEND`` allows for tensors on ``device``, Triton first where both GPU backends
    are there (it was the faster on the one GPU measured; the timing decides)."""
    selected = selected_backend()
    if selected == "pytorch":
        return [PYTORCH]
    if selected == "triton":
        triton_impl = kernels.triton_module()
        if triton_impl is None:
            raise RuntimeError(f"{BACKEND_ENV}=triton but Triton is not installed: `pip install triton` (it comes "
                               f"with CUDA builds of torch), or set {BACKEND_ENV}=auto.")
        return [Backend("triton", triton_impl.ms_deform_attn_triton, reads_half=True)]
    kernel = {"cuda": kernels.cuda_kernel, "cpu": kernels.cpu_kernel}.get(device.type, lambda: None)()
    compiled = [] if kernel is None else [compiled_backend(kernel, device)]
    if selected == "cpp":
        if not compiled:
            hint = ("build it with `cd models/ops && python setup.py build install`" if device.type == "cuda"
                    else "see the warning above for why it did not compile")
            raise RuntimeError(f"{BACKEND_ENV}=cpp but no compiled multi-scale deformable attention kernel is "
                               f"available for {device.type} tensors: {hint}, or set {BACKEND_ENV}=auto.")
        return compiled
    if device.type == "cuda" and kernels.triton_works_on(device):
        compiled.insert(0, Backend("triton", kernels.triton_module().ms_deform_attn_triton, reads_half=True))
    return compiled or [PYTORCH]


def compiled_backend(kernel, device: torch.device) -> Backend:
    """The CUDA extension or the C++ CPU kernel as a backend."""
    name = "cuda_extension" if device.type == "cuda" else "cpp_cpu"

    def function(*inputs):
        return _CompiledMSDeformAttn.apply(kernel, *inputs)

    return Backend(name, function)


class _CompiledMSDeformAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernel, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        ctx.kernel = kernel
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return kernel.ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations,
                                             attention_weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_value, grad_locations, grad_weights = ctx.kernel.ms_deform_attn_backward(
            *ctx.saved_tensors, grad_output.contiguous())
        return None, grad_value, None, None, grad_locations, grad_weights


def check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> None:
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be [N, S, M, D], got shape {tuple(value.shape)}.")
    n, _, m, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"ms_deform_attn: spatial_shapes must be [L, 2] (H, W), got {tuple(spatial_shapes.shape)}.")
    num_levels = spatial_shapes.shape[0]
    if tuple(level_start_index.shape) != (num_levels,):
        raise ValueError(f"ms_deform_attn: level_start_index must be [L={num_levels}], "
                         f"got {tuple(level_start_index.shape)}.")
    if (sampling_locations.dim() != 6 or sampling_locations.shape[0] != n or sampling_locations.shape[2] != m
            or sampling_locations.shape[3] != num_levels or sampling_locations.shape[5] != 2):
        raise ValueError(f"ms_deform_attn: sampling_locations must be [N={n}, Lq, M={m}, L={num_levels}, P, 2], "
                         f"got {tuple(sampling_locations.shape)}.")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"ms_deform_attn: attention_weights must be {tuple(sampling_locations.shape[:-1])} "
                         f"(sampling_locations without the last dim), got {tuple(attention_weights.shape)}.")
