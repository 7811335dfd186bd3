"""Inputs and the plain-loop float64 reference for the multi-scale deformable attention tests."""
import math

import torch

SHAPES = torch.tensor([[4, 5], [2, 3]])  # (H, W) per level


def make_inputs(n=2, lq=3, m=2, d=3, p=2, dtype=torch.float64, seed=0, shapes=SHAPES, low=-0.2, high=1.2):
    """Random op inputs; with the default range part of the locations fall outside [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    num_levels = shapes.shape[0]
    keys = int((shapes[:, 0] * shapes[:, 1]).sum())
    starts = torch.cat([torch.zeros(1, dtype=torch.long), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    value = torch.rand(n, keys, m, d, generator=generator, dtype=dtype)
    locations = low + (high - low) * torch.rand(n, lq, m, num_levels, p, 2, generator=generator, dtype=dtype)
    weights = torch.rand(n, lq, m, num_levels, p, generator=generator, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, shapes, starts, locations, weights


def loop_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Bilinear sampling point by point in plain Python (float64): corners outside the image read zero."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    v = value.double().tolist()
    loc = sampling_locations.double().tolist()
    attn = attention_weights.double().tolist()
    out = [[[[0.0] * d for _ in range(m)] for _ in range(lq)] for _ in range(n)]
    for b in range(n):
        for q in range(lq):
            for h in range(m):
                for level in range(num_levels):
                    height, width = spatial_shapes[level].tolist()
                    start = int(level_start_index[level])
                    for p in range(num_points):
                        x = loc[b][q][h][level][p][0] * width - 0.5
                        y = loc[b][q][h][level][p][1] * height - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        for xi in (x0, x0 + 1):
                            for yi in (y0, y0 + 1):
                                if not (0 <= xi < width and 0 <= yi < height):
                                    continue
                                weight = attn[b][q][h][level][p] * (1 - abs(x - xi)) * (1 - abs(y - yi))
                                row = v[b][start + yi * width + xi][h]
                                for c in range(d):
                                    out[b][q][h][c] += weight * row[c]
    return torch.tensor(out, dtype=torch.float64).view(n, lq, m * d)
