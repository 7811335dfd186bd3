"""Multi-scale deformable attention in Triton: forward and backward kernels with autograd, nothing to build.

:func:`ms_deform_attn_triton` has the contract of :func:`models.ops.ms_deform_attn` (shapes there): bilinear
samples with ``x = loc_x * W - 0.5``, corners outside a level read zero, any batch size, first-order autograd.
Triton ships with CUDA builds of torch, so on a GPU this path needs no compiler toolchain.

Work split: one program per (batch item n, head m, block of ``BLOCK_Q`` queries). It holds all D channels of its
queries as ``[BLOCK_Q, BLOCK_D]`` tiles (``BLOCK_D`` = D rounded up to a power of two), so each value row of a
bilinear corner is one contiguous read per query, and the sums over channels that the location and weight
gradients need stay inside the program (plain stores, no atomics). Levels and points are compile-time constants,
so their loops unroll. The backward pass scatters ``grad_value`` with atomics (value rows are shared between
queries) into a zeroed buffer of the compute dtype.

Precision: inputs are read in their own dtype (float16, bfloat16, float32 or float64) and computed in float32
(float64 in float64); the output and the gradients come back in the inputs' dtypes.

Without a GPU: with ``TRITON_INTERPRET=1`` in the environment *before triton is first imported* (``@triton.jit``
reads it when it decorates a function, Triton's own ``tl.sum`` included; diffusers and peft import triton), the
kernels run on CPU tensors in Triton's numpy interpreter, slowly; ``tests/conftest.py`` does that.
"""
import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from models.ops.ms_deform_attn_function import check_shapes

INTERPRETED = bool(triton.knobs.runtime.interpret)  # what @triton.jit saw when the kernels below were defined
_TILE_ELEMENTS = 2048  # BLOCK_Q * BLOCK_D per program: 16 float32 per thread with 4 warps
_COMPUTE_DTYPES = {torch.float64: tl.float64}  # everything else computes in float32


@triton.jit
def _level(shapes_ptr, starts_ptr, head_base, row_stride, level):
    """(H, W) of ``level`` and the offset of its first value row for this program's (n, m)."""
    h = tl.load(shapes_ptr + 2 * level)
    w = tl.load(shapes_ptr + 2 * level + 1)
    return h, w, head_base + tl.load(starts_ptr + level) * row_stride


@triton.jit
def _sample(loc_ptr, attn_ptr, query_head, q_ok, h, w, level, point, NUM_LEVELS: tl.constexpr,
            NUM_POINTS: tl.constexpr, ACC: tl.constexpr):
    """One sampling point per query, all [BLOCK_Q]: its flat index into attention_weights, floor corner (x0, y0)
    and fractions (fx, fy) in pixels, whether any corner can be inside, its attention weight."""
    sample = query_head * (NUM_LEVELS * NUM_POINTS) + (level * NUM_POINTS + point)
    w_f = w.to(ACC)
    h_f = h.to(ACC)
    x = tl.load(loc_ptr + 2 * sample, mask=q_ok, other=0.0).to(ACC) * w_f - 0.5
    y = tl.load(loc_ptr + 2 * sample + 1, mask=q_ok, other=0.0).to(ACC) * h_f - 0.5
    inside = q_ok & (x > -1) & (y > -1) & (x < w_f) & (y < h_f)  # False for NaN too
    x = tl.where(inside, x, 0.0)  # keeps NaN out of the weights of masked-out corners
    y = tl.where(inside, y, 0.0)
    x_floor = tl.floor(x)
    y_floor = tl.floor(y)
    attn = tl.load(attn_ptr + sample, mask=q_ok, other=0.0).to(ACC)
    return sample, x_floor.to(tl.int64), y_floor.to(tl.int64), x - x_floor, y - y_floor, inside, attn


@triton.jit
def _corner(x0, y0, fx, fy, inside, h, w, DX: tl.constexpr, DY: tl.constexpr):
    """Corner (x0 + DX, y0 + DY): its key within the level, whether it is inside, its bilinear weight and the
    weight's derivatives in x and y (pixel units). All [BLOCK_Q]."""
    x = x0 + DX
    y = y0 + DY
    ok = inside & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    weight_x = (1 - DX) + (2 * DX - 1) * fx  # 1 - fx for the left corner, fx for the right one
    weight_y = (1 - DY) + (2 * DY - 1) * fy
    return y * w + x, ok, weight_x * weight_y, (2 * DX - 1) * weight_y, weight_x * (2 * DY - 1)


@triton.jit
def _program_tile(num_keys, num_queries, num_heads, channels, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's queries' flat (n, q, m) indices [BLOCK_Q], the channels [BLOCK_D], the masks of both, the
    offset of its (n, m) value rows and the stride between value rows."""
    query_blocks = tl.cdiv(num_queries, BLOCK_Q)
    pid = tl.program_id(0)
    batch_head = pid // query_blocks  # n * M + m
    n = (batch_head // num_heads).to(tl.int64)
    m = batch_head % num_heads
    q = (pid % query_blocks) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)
    query_head = (n * num_queries + q) * num_heads + m
    row_stride = num_heads * channels
    return query_head, q < num_queries, d, d < channels, n * num_keys * row_stride + m * channels, row_stride


@triton.jit
def _forward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr,
                    num_keys, num_queries, num_heads, channels,
                    NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr, BLOCK_Q: tl.constexpr,
                    BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    query_head, q_ok, d, d_ok, head_base, row_stride = _program_tile(num_keys, num_queries, num_heads, channels,
                                                                     BLOCK_Q, BLOCK_D)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=ACC)
    for level in tl.static_range(NUM_LEVELS):
        h, w, level_base = _level(shapes_ptr, starts_ptr, head_base, row_stride, level)
        for point in tl.static_range(NUM_POINTS):
            _, x0, y0, fx, fy, inside, attn = _sample(loc_ptr, attn_ptr, query_head, q_ok, h, w, level, point,
                                                      NUM_LEVELS, NUM_POINTS, ACC)
            for corner in tl.static_range(4):
                key, ok, weight, _, _ = _corner(x0, y0, fx, fy, inside, h, w, corner % 2, corner // 2)
                rows = value_ptr + level_base + key[:, None] * row_stride + d[None, :]
                v = tl.load(rows, mask=ok[:, None] & d_ok[None, :], other=0.0).to(ACC)
                acc += (attn * weight)[:, None] * v
    out = out_ptr + query_head[:, None] * channels + d[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


@triton.jit
def _backward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr,
                     grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
                     num_keys, num_queries, num_heads, channels,
                     NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr, BLOCK_Q: tl.constexpr,
                     BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    query_head, q_ok, d, d_ok, head_base, row_stride = _program_tile(num_keys, num_queries, num_heads, channels,
                                                                     BLOCK_Q, BLOCK_D)
    tile_ok = q_ok[:, None] & d_ok[None, :]
    grad = tl.load(grad_out_ptr + query_head[:, None] * channels + d[None, :], mask=tile_ok, other=0.0).to(ACC)
    for level in tl.static_range(NUM_LEVELS):
        h, w, level_base = _level(shapes_ptr, starts_ptr, head_base, row_stride, level)
        for point in tl.static_range(NUM_POINTS):
            sample, x0, y0, fx, fy, inside, attn = _sample(loc_ptr, attn_ptr, query_head, q_ok, h, w, level, point,
                                                           NUM_LEVELS, NUM_POINTS, ACC)
            # <grad, sample>, and its derivatives in x and y, each summed over the D channels: [BLOCK_Q]
            grad_dot_sample = tl.zeros([BLOCK_Q], dtype=ACC)
            grad_dot_dx = tl.zeros([BLOCK_Q], dtype=ACC)
            grad_dot_dy = tl.zeros([BLOCK_Q], dtype=ACC)
            for corner in tl.static_range(4):
                key, ok, weight, dweight_dx, dweight_dy = _corner(x0, y0, fx, fy, inside, h, w, corner % 2,
                                                                  corner // 2)
                offsets = level_base + key[:, None] * row_stride + d[None, :]
                corner_ok = ok[:, None] & d_ok[None, :]
                v = tl.load(value_ptr + offsets, mask=corner_ok, other=0.0).to(ACC)
                grad_dot_v = tl.sum(grad * v, axis=1)
                grad_dot_sample += weight * grad_dot_v
                grad_dot_dx += dweight_dx * grad_dot_v
                grad_dot_dy += dweight_dy * grad_dot_v
                tl.atomic_add(grad_value_ptr + offsets, (attn * weight)[:, None] * grad, mask=corner_ok)
            tl.store(grad_attn_ptr + sample, grad_dot_sample, mask=q_ok)
            tl.store(grad_loc_ptr + 2 * sample, attn * grad_dot_dx * w.to(ACC), mask=q_ok)
            tl.store(grad_loc_ptr + 2 * sample + 1, attn * grad_dot_dy * h.to(ACC), mask=q_ok)


def _launch_config(value: torch.Tensor, sampling_locations: torch.Tensor) -> tuple[tuple[int], dict]:
    """Grid and compile-time constants for value [N, S, M, D] and locations [N, Lq, M, L, P, 2]."""
    n, _, m, d = value.shape
    lq, num_levels, num_points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    block_d = triton.next_power_of_2(d)
    block_q = max(1, min(triton.next_power_of_2(lq), _TILE_ELEMENTS // block_d))
    grid = (n * m * triton.cdiv(lq, block_q),)
    constants = dict(NUM_LEVELS=num_levels, NUM_POINTS=num_points, BLOCK_Q=block_q, BLOCK_D=block_d,
                     ACC=_COMPUTE_DTYPES.get(value.dtype, tl.float32))
    return grid, constants


def _sizes(value: torch.Tensor, sampling_locations: torch.Tensor) -> tuple[int, int, int, int]:
    """(S, Lq, M, D): the runtime sizes the kernels take."""
    return value.shape[1], sampling_locations.shape[1], value.shape[2], value.shape[3]


def _forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> torch.Tensor:
    n, _, m, d = value.shape
    out = value.new_empty(n, sampling_locations.shape[1], m * d)
    if out.numel() == 0:
        return out
    grid, constants = _launch_config(value, sampling_locations)
    _forward_kernel[grid](value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out,
                          *_sizes(value, sampling_locations), **constants)
    return out


def _backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output):
    compute = torch.float64 if value.dtype == torch.float64 else torch.float32
    grad_value = torch.zeros(value.shape, dtype=compute, device=value.device)
    grad_locations = torch.zeros(sampling_locations.shape, dtype=compute, device=value.device)
    grad_weights = torch.zeros(attention_weights.shape, dtype=compute, device=value.device)
    if grad_output.numel() > 0:
        grid, constants = _launch_config(value, sampling_locations)
        _backward_kernel[grid](value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                               grad_output, grad_value, grad_locations, grad_weights,
                               *_sizes(value, sampling_locations), **constants)
    return (grad_value.to(value.dtype), grad_locations.to(sampling_locations.dtype),
            grad_weights.to(attention_weights.dtype))


class _TritonMSDeformAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return _forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_value, grad_locations, grad_weights = _backward(*ctx.saved_tensors, grad_output.contiguous())
        return grad_value, None, None, grad_locations, grad_weights


def ms_deform_attn_triton(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention with the Triton kernels; [N, Lq, M*D] in ``value``'s dtype.

    value [N, S, M, D], spatial_shapes long [L, 2] (H, W), level_start_index long [L], sampling_locations
    [N, Lq, M, L, P, 2] normalised (x, y), attention_weights [N, Lq, M, L, P]; float16, bfloat16, float32 or
    float64, each read in its own dtype. All on one CUDA device, or on the CPU under ``TRITON_INTERPRET=1``.
    """
    check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    device = value.device
    if device.type != "cuda" and not INTERPRETED:
        raise ValueError(f"ms_deform_attn_triton: the tensors are on {device}; the Triton kernels run on CUDA "
                         "devices, or on the CPU with TRITON_INTERPRET=1 set before triton is first imported.")
    for name, tensor in (("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if tensor.device != device:
            raise ValueError(f"ms_deform_attn_triton: {name} is on {tensor.device}, value on {device}; move "
                             "them to one device.")
    spatial_shapes = spatial_shapes.to(device=device, dtype=torch.long).contiguous()
    level_start_index = level_start_index.to(device=device, dtype=torch.long).contiguous()
    return _TritonMSDeformAttn.apply(value.contiguous(), spatial_shapes, level_start_index,
                                     sampling_locations.contiguous(), attention_weights.contiguous())
