"""``MSDeformAttn``: the multi-scale deformable attention layer of Deformable DETR (same parameters and init)."""
import math
from collections.abc import Sequence

import torch
from torch import nn

from models.ops.ms_deform_attn_function import ms_deform_attn
from util.errors import UserInputError


class MSDeformAttn(nn.Module):
    """Each query attends to ``n_points`` sampled locations per head and level around its reference point.

    Args:
        d_model: channels C of queries and values; must be divisible by ``n_heads``.
        n_levels: number of feature levels L.
        n_heads: attention heads M (each with C / M channels).
        n_points: sampling points P per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise UserInputError(f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads}); "
                                 f"pick n_heads among the divisors of d_model.")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on a per-head direction grid scaled by the point index; uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], dim=-1)  # [M, 2]
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values  # onto the unit square
        point_scale = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = directions.view(self.n_heads, 1, 1, 2) * point_scale  # [M, 1, P, 2]
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: torch.Tensor | None = None,
        input_spatial_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: [N, Lq, C].
            reference_points: [N, Lq, L, 2] normalised (x, y) points, or [N, Lq, L, 4] (cx, cy, w, h) boxes
                (offsets are then scaled by half the box size).
            input_flatten: [N, S, C], all levels flattened and concatenated, S = sum_l H_l*W_l.
            input_spatial_shapes: long [L, 2], (H_l, W_l).
            input_level_start_index: long [L].
            input_padding_mask: [N, S] bool, True at padding (those values are zeroed), or None.
            input_spatial_sizes: the (H_l, W_l) of ``input_spatial_shapes`` as Python ints, when the caller has
                them: the input check then does not read the tensor (on a GPU, a wait for the device).

        Returns:
            [N, Lq, C]
        """
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        if input_spatial_sizes is None:
            input_spatial_sizes = input_spatial_shapes.tolist()
        self._check_inputs(query, reference_points, input_flatten, input_spatial_shapes, input_spatial_sizes,
                           input_padding_mask)
        m, num_levels, num_points = self.n_heads, self.n_levels, self.n_points

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, m, self.d_model // m)

        # Locations and attention in fp32 even under autocast: offsets of a few pixels on a 1/W scale.
        dtype = torch.promote_types(query.dtype, torch.float32)
        offsets = self.sampling_offsets(query).to(dtype).view(n, lq, m, num_levels, num_points, 2)
        weights = self.attention_weights(query).to(dtype).view(n, lq, m, num_levels * num_points)
        weights = weights.softmax(-1).view(n, lq, m, num_levels, num_points)
        ref = reference_points.to(dtype)[:, :, None, :, None, :]  # [N, Lq, 1, L, 1, 2 or 4]
        if reference_points.shape[-1] == 2:
            wh = input_spatial_shapes.flip(-1).to(offsets)  # [L, 2] as (W, H)
            locations = ref + offsets / wh[None, None, None, :, None, :]
        else:
            locations = ref[..., :2] + offsets / num_points * ref[..., 2:] * 0.5

        out = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations, weights)
        return self.output_proj(out)

    def _check_inputs(self, query, reference_points, input_flatten, input_spatial_shapes, input_spatial_sizes,
                      input_padding_mask):
        n, lq, c = query.shape
        if c != self.d_model or input_flatten.dim() != 3 or input_flatten.shape[0] != n \
                or input_flatten.shape[2] != self.d_model:
            raise ValueError(f"MSDeformAttn: expected query [N, Lq, {self.d_model}] and input_flatten "
                             f"[N, S, {self.d_model}], got {tuple(query.shape)} and {tuple(input_flatten.shape)}.")
        if tuple(input_spatial_shapes.shape) != (self.n_levels, 2):
            raise ValueError(f"MSDeformAttn: input_spatial_shapes must be [{self.n_levels}, 2] (H, W), "
                             f"got {tuple(input_spatial_shapes.shape)}.")
        total = sum(height * width for height, width in input_spatial_sizes)
        if total != input_flatten.shape[1]:
            raise ValueError(f"MSDeformAttn: input_flatten has S={input_flatten.shape[1]} tokens but the spatial "
                             f"shapes {[list(size) for size in input_spatial_sizes]} sum to {total}.")
        if reference_points.dim() != 4 or reference_points.shape[:3] != (n, lq, self.n_levels) \
                or reference_points.shape[-1] not in (2, 4):
            raise ValueError(f"MSDeformAttn: reference_points must be [{n}, {lq}, {self.n_levels}, 2 or 4], "
                             f"got {tuple(reference_points.shape)}.")
        if input_padding_mask is not None and tuple(input_padding_mask.shape) != tuple(input_flatten.shape[:2]):
            raise ValueError(f"MSDeformAttn: input_padding_mask must be {tuple(input_flatten.shape[:2])}, "
                             f"got {tuple(input_padding_mask.shape)}.")
