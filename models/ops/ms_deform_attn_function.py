"""``ms_deform_attn``: the multi-scale deformable attention operator and its backend dispatch.

Backends, chosen per call from the tensors' device:

- CUDA tensors: the CUDA extension (``src/cuda``) when it is installed (``cd models/ops && python setup.py build
  install``) or compiles on first use (needs nvcc); else the Triton kernels (:mod:`models.ops.triton_impl`, no
  compile step: Triton ships with CUDA builds of torch) when they pass a one-off self-check on the device; else
  pure PyTorch.
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

Every backend computes in float32 (float64 stays float64), returns the dtype of ``value``, has no
``im2col_step`` limit on the batch and supports autograd (first order).
"""
import contextlib
import functools
import os

import torch
from torch.autograd.function import once_differentiable

from models.ops import kernels
from models.ops.pytorch_impl import ms_deform_attn_pytorch

BACKEND_ENV = "HCD_MSDA_BACKEND"
BACKENDS = ("auto", "pytorch", "cpp", "triton")


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
    out_dtype = value.dtype
    compute_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    device = value.device
    value, sampling_locations, attention_weights = (
        t.to(compute_dtype).contiguous() for t in (value, sampling_locations, attention_weights))
    spatial_shapes = spatial_shapes.to(device=device, dtype=torch.long).contiguous()
    level_start_index = level_start_index.to(device=device, dtype=torch.long).contiguous()

    # Under autocast the pure path's matmuls would silently drop to fp16/bf16: keep them in compute_dtype.
    no_autocast = (torch.autocast(device_type=device.type, enabled=False)
                   if torch.amp.is_autocast_available(device.type) else contextlib.nullcontext())
    with no_autocast:
        out = implementation(device)(value, spatial_shapes, level_start_index, sampling_locations,
                                     attention_weights)
    return out.to(out_dtype)


def selected_backend() -> str:
    """The value of ``HCD_MSDA_BACKEND`` (default ``auto``), validated."""
    backend = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={backend!r} is not a multi-scale deformable attention backend; "
                         f"use one of {', '.join(BACKENDS)}.")
    return backend


def implementation(device: torch.device):
    """The function with ``ms_deform_attn``'s signature that the backend choice gives for ``device``."""
    backend = selected_backend()
    if backend == "pytorch":
        return ms_deform_attn_pytorch
    if backend == "triton":
        triton_impl = kernels.triton_module()
        if triton_impl is None:
            raise RuntimeError(f"{BACKEND_ENV}=triton but Triton is not installed: `pip install triton` (it comes "
                               f"with CUDA builds of torch), or set {BACKEND_ENV}=auto.")
        return triton_impl.ms_deform_attn_triton
    kernel = {"cuda": kernels.cuda_kernel, "cpu": kernels.cpu_kernel}.get(device.type, lambda: None)()
    if kernel is not None:
        return functools.partial(_CompiledMSDeformAttn.apply, kernel)
    if backend == "cpp":
        hint = ("build it with `cd models/ops && python setup.py build install`" if device.type == "cuda"
                else "see the warning above for why it did not compile")
        raise RuntimeError(f"{BACKEND_ENV}=cpp but no compiled multi-scale deformable attention kernel is "
                           f"available for {device.type} tensors: {hint}, or set {BACKEND_ENV}=auto.")
    if device.type == "cuda" and kernels.triton_works_on(device):
        return kernels.triton_module().ms_deform_attn_triton
    return ms_deform_attn_pytorch


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
