"""Sine position embeddings: hand-computed values, layout, padding excluded from normalisation."""
import math

import torch

from models.position_encoding import PositionEmbeddingSine1D, PositionEmbeddingSine2D


def test_2d_unnormalised_values_at_known_positions():
    embed = PositionEmbeddingSine2D(num_pos_feats=4, temperature=100, normalize=False)
    pos = embed(torch.zeros(1, 2, 3, dtype=torch.bool))
    assert pos.shape == (1, 8, 2, 3)
    # dim_t = 100^(2 * (i // 2) / 4) = (1, 1, 10, 10); row y=1 (0-based), column x=2 -> y=2, x=3
    y, x = 2.0, 3.0
    expected = [math.sin(y), math.cos(y), math.sin(y / 10), math.cos(y / 10),
                math.sin(x), math.cos(x), math.sin(x / 10), math.cos(x / 10)]
    torch.testing.assert_close(pos[0, :, 1, 2], torch.tensor(expected))


def test_2d_normalised_uses_cell_centres():
    embed = PositionEmbeddingSine2D(num_pos_feats=2, normalize=True)
    pos = embed(torch.zeros(1, 2, 4, dtype=torch.bool))
    # row 0 of 2: (1 - .5) / 2 * 2 pi = pi / 2; column 3 of 4: (4 - .5) / 4 * 2 pi = 7 pi / 4
    torch.testing.assert_close(pos[0, :, 0, 3], torch.tensor(
        [1.0, 0.0, math.sin(7 * math.pi / 4), math.cos(7 * math.pi / 4)]), atol=1e-5, rtol=1e-5)


def test_2d_padding_excluded_from_normalisation():
    embed = PositionEmbeddingSine2D(num_pos_feats=8)
    small = embed(torch.zeros(1, 3, 4, dtype=torch.bool))
    mask = torch.ones(2, 5, 7, dtype=torch.bool)
    mask[0, :3, :4] = False  # frame 0 is the small image padded bottom-right
    mask[1] = False
    padded = embed(mask)
    assert padded.shape == (2, 16, 5, 7)
    torch.testing.assert_close(padded[0, :, :3, :4], small[0])
    assert not torch.allclose(padded[1, :, :3, :4], small[0])


def test_1d_values_and_padding():
    embed = PositionEmbeddingSine1D(num_pos_feats=4, temperature=100, normalize=True)
    mask = torch.tensor([[False, False, True, True], [False, False, False, False]])
    pos = embed(mask)
    assert pos.shape == (2, 4, 4)
    # sentence 0 has 2 tokens: token 1 (0-based) -> 2 / 2 * 2 pi; dim_t = (1, 1, 10, 10)
    x = 2 * math.pi
    torch.testing.assert_close(pos[0, 1], torch.tensor([math.sin(x), math.cos(x), math.sin(x / 10),
                                                        math.cos(x / 10)]), atol=1e-5, rtol=1e-5)
    unpadded = embed(torch.zeros(1, 2, dtype=torch.bool))
    torch.testing.assert_close(pos[0, :2], unpadded[0])
    x = 0.25 * 2 * math.pi  # sentence 1, token 0 of 4
    torch.testing.assert_close(pos[1, 0, :2], torch.tensor([math.sin(x), math.cos(x)]))
