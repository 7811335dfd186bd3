"""Pure-PyTorch multi-scale deformable attention (no compilation needed).

Two formulations of the same operator (shapes as in :func:`models.ops.ms_deform_attn`):

- :func:`ms_deform_attn_pytorch` (the default fallback): bilinear sampling as one weighted gather over all
  levels. ``value`` gets a zero border around each level, locations are clamped into that border, and every
  sampling point contributes its 4 corners through flat row indices; ``F.embedding_bag(mode='sum',
  per_sample_weights=...)`` then sums K = L*P*4 weighted rows per query-head without materialising them.
  No inside-image masks are needed: corners off the image read the zero border.
- :func:`ms_deform_attn_grid_sample`: the classic Deformable-DETR ``ms_deform_attn_core_pytorch``, one
  ``F.grid_sample`` per level. Kept as the reference the tests and the benchmark compare against.

Pixel convention of both: ``x = loc_x * W - 0.5`` (``grid_sample(align_corners=False)``), corners outside the
image contribute zero (``padding_mode='zeros'``).
"""
import torch
import torch.nn.functional as F
from einops import rearrange

# Zero border added around every level: 1 before, 2 after. Pixel coordinates are clamped to [-1, size], so the
# corners floor(x) and floor(x) + 1 always fall in [-1, size + 1].
_BORDER_BEFORE, _BORDER_AFTER = 1, 2


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted-gather formulation; returns [N, Lq, M*D] in ``value``'s dtype.

    value [N, S, M, D], spatial_shapes long [L, 2] (H, W), level_start_index long [L] (implied by the shapes),
    sampling_locations [N, Lq, M, L, P, 2] (x, y) in [0, 1], attention_weights [N, Lq, M, L, P].
    """
    del level_start_index  # the bordered layout has its own level starts, computed from the shapes
    n, _, m, d = value.shape
    _, lq, _, num_levels, _, _ = sampling_locations.shape
    device, dtype = sampling_locations.device, sampling_locations.dtype
    sizes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    table = _with_zero_border(value, sizes)  # [N, S', M, D]
    border = _BORDER_BEFORE + _BORDER_AFTER
    bordered_width = torch.tensor([w + border for _, w in sizes], device=device).view(num_levels, 1)
    bordered_start = torch.tensor([0] + [(h + border) * (w + border) for h, w in sizes][:-1],
                                  device=device).cumsum(0).view(num_levels, 1)

    size_xy = spatial_shapes.to(device=device, dtype=dtype).flip(-1).view(num_levels, 1, 2)  # (W, H)
    pixel = sampling_locations * size_xy - 0.5  # [N, Lq, M, L, P, 2]
    pixel = torch.where(pixel > -1, pixel, -1.0).minimum(size_xy)  # NaN -> -1 as well: reads zeros
    corner = pixel.floor()
    fx, fy = (pixel - corner).unbind(-1)  # [N, Lq, M, L, P]
    corner = corner.long() + _BORDER_BEFORE
    key = bordered_start + corner[..., 1] * bordered_width + corner[..., 0]  # in [0, S') per batch item
    # Row of table.reshape(N*S'*M, D) = (n*S' + key)*M + m; the 4 corners are +0, +1, +W', +W'+1 keys away.
    batch = torch.arange(n, device=device).view(n, 1, 1, 1, 1) * table.shape[1]
    head = torch.arange(m, device=device).view(1, 1, m, 1, 1)
    row = (batch + key) * m + head
    corner_step = torch.cat([torch.zeros_like(bordered_width), torch.ones_like(bordered_width),
                             bordered_width, bordered_width + 1], dim=-1).view(num_levels, 1, 4) * m
    rows = row.unsqueeze(-1) + corner_step  # [N, Lq, M, L, P, 4]
    gx, gy = 1 - fx, 1 - fy
    weights = torch.stack([gx * gy, fx * gy, gx * fy, fx * fy], dim=-1) * attention_weights.unsqueeze(-1)

    out = F.embedding_bag(rows.view(n * lq * m, -1), table.reshape(-1, d),
                          per_sample_weights=weights.reshape(n * lq * m, -1), mode="sum")  # [N*Lq*M, D]
    return out.view(n, lq, m * d)


def _with_zero_border(value: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor:
    """[N, S, M, D] -> [N, sum_l (H_l+3)*(W_l+3), M, D]: each level padded by 1 before and 2 after in x and y."""
    n, _, m, d = value.shape
    levels = value.split([h * w for h, w in sizes], dim=1)
    padding = (0, 0, _BORDER_BEFORE, _BORDER_AFTER, _BORDER_BEFORE, _BORDER_AFTER)  # (M*D), W, H
    bordered = [F.pad(level.reshape(n, h, w, m * d), padding).flatten(1, 2) for level, (h, w) in zip(levels, sizes)]
    return torch.cat(bordered, dim=1).view(n, -1, m, d)


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
