"""Pure-PyTorch multi-scale deformable attention (no compilation needed).

Two formulations of the same operator (shapes as in :func:`models.ops.ms_deform_attn`):

- :func:`ms_deform_attn_pytorch` (the default fallback): bilinear sampling written as a weighted gather.
  Every sampling point contributes its 4 bilinear corners over all levels at once, so one query-head reads
  K = L*P*4 rows of ``value`` through flat indices and combines them with K weights
  (attention weight x bilinear weight x inside-image mask). The combination is a custom autograd function that
  works in row chunks, so neither pass materialises the [N, Lq, M, K, D] gathered tensor in full.
- :func:`ms_deform_attn_grid_sample`: the classic Deformable-DETR ``ms_deform_attn_core_pytorch``, one
  ``F.grid_sample`` per level. Kept as the reference the tests and the benchmark compare against.

Pixel convention of both: ``x = loc_x * W - 0.5`` (``grid_sample(align_corners=False)``), corners outside the
image contribute zero (``padding_mode='zeros'``).
"""
import torch
import torch.nn.functional as F
from einops import rearrange

# Upper bound on the temporary [rows, K, D] gather of one chunk (elements): ~64 MB in fp32.
_CHUNK_ELEMENTS = 1 << 24


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted-gather formulation; returns [N, Lq, M*D] in ``value``'s dtype.

    value [N, S, M, D], spatial_shapes long [L, 2] (H, W), level_start_index long [L],
    sampling_locations [N, Lq, M, L, P, 2] (x, y) in [0, 1], attention_weights [N, Lq, M, L, P].
    Needs no host synchronisation (shapes stay tensors).
    """
    n, s, m, d = value.shape
    lq = sampling_locations.shape[1]
    rows, weights = bilinear_corners(value.shape, spatial_shapes, level_start_index, sampling_locations,
                                     attention_weights)
    table = value.reshape(n * s * m, d)
    out = WeightedGather.apply(table, rows.reshape(n * lq * m, -1), weights.reshape(n * lq * m, -1))
    return out.view(n, lq, m * d)


def bilinear_corners(
    value_shape: torch.Size,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat ``value`` rows and combined weights of every bilinear corner of every sampling point.

    Returns rows (long) and weights, both [N, Lq, M, L*P*4]; row r indexes ``value.reshape(N*S*M, D)``.
    Weights are differentiable w.r.t. the locations (through the fractional parts) and the attention weights.
    """
    n, s, m, _ = value_shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    dtype, device = sampling_locations.dtype, sampling_locations.device
    shapes = spatial_shapes.to(device)
    height = shapes[:, 0].view(num_levels, 1)  # [L, 1] broadcasts over [N, Lq, M, L, P]
    width = shapes[:, 1].view(num_levels, 1)
    start = level_start_index.to(device).view(num_levels, 1)

    x = sampling_locations[..., 0] * width.to(dtype) - 0.5  # [N, Lq, M, L, P]
    y = sampling_locations[..., 1] * height.to(dtype) - 0.5
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx = x - x0
    fy = y - y0
    x0 = x0.long()
    y0 = y0.long()

    # Row of value.reshape(N*S*M, D) = (n*S + s)*M + m.
    batch_offset = torch.arange(n, device=device).view(n, 1, 1, 1, 1) * s
    head = torch.arange(m, device=device).view(1, 1, m, 1, 1)

    rows, weights = [], []
    for dx, dy, corner_weight in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi = x0 + dx
        yi = y0 + dy
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        pixel = start + yi.clamp(min=0).minimum(height - 1) * width + xi.clamp(min=0).minimum(width - 1)
        rows.append((batch_offset + pixel) * m + head)
        weights.append(attention_weights * corner_weight * inside.to(dtype))
    rows = torch.stack(rows, dim=-1).view(n, lq, m, -1)
    weights = torch.stack(weights, dim=-1).view(n, lq, m, -1)
    return rows, weights


class WeightedGather(torch.autograd.Function):
    """out[r] = sum_k weights[r, k] * table[rows[r, k]]: a sparse-times-dense product, computed in chunks.

    table [R_in, D], rows long [R, K], weights [R, K] -> out [R, D].
    """

    @staticmethod
    def forward(ctx, table, rows, weights):
        ctx.save_for_backward(table, rows, weights)
        out = table.new_empty(rows.shape[0], table.shape[1])
        for chunk in _row_chunks(rows.shape, table.shape[1]):
            gathered = table[rows[chunk]]  # [c, K, D]
            torch.bmm(weights[chunk].unsqueeze(1), gathered, out=out[chunk].unsqueeze(1))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        table, rows, weights = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[0] else None
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[2] else None
        for chunk in _row_chunks(rows.shape, table.shape[1]):
            if grad_weights is not None:
                gathered = table[rows[chunk]]  # [c, K, D]
                torch.bmm(gathered, grad_out[chunk].unsqueeze(2), out=grad_weights[chunk].unsqueeze(2))
            if grad_table is not None:
                contributions = weights[chunk].unsqueeze(2) * grad_out[chunk].unsqueeze(1)  # [c, K, D]
                grad_table.index_add_(0, rows[chunk].reshape(-1), contributions.reshape(-1, table.shape[1]))
        return grad_table, None, grad_weights


def _row_chunks(rows_shape: torch.Size, channels: int):
    num_rows, k = rows_shape
    step = max(1, _CHUNK_ELEMENTS // max(1, k * channels))
    for begin in range(0, num_rows, step):
        yield slice(begin, min(begin + step, num_rows))


def ms_deform_attn_grid_sample(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """The classic per-level ``F.grid_sample`` formulation (Deformable-DETR's reference); [N, Lq, M*D].

    Same arguments as :func:`ms_deform_attn_pytorch`. ``level_start_index`` is implied by the shapes.
    """
    del level_start_index  # the split sizes H*W already locate the levels
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_levels = value.split([h * w for h, w in sizes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] range
    sampled = []
    for level, (h, w) in enumerate(sizes):
        value_l = rearrange(value_levels[level], "n (h w) m d -> (n m) d h w", h=h, w=w)
        grid_l = rearrange(grids[:, :, :, level], "n q m p xy -> (n m) q p xy")
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # [N*M, D, Lq, P]
    sampled = torch.stack(sampled, dim=-2).flatten(-2)  # [N*M, D, Lq, L*P]
    weights = rearrange(attention_weights, "n q m l p -> (n m) 1 q (l p)")
    out = (sampled * weights).sum(-1)  # [N*M, D, Lq]
    return rearrange(out, "(n m) d q -> n q (m d)", n=n, m=m)
