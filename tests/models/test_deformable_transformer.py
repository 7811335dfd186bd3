"""DeformableTransformer: shapes, padding invariance, reference points, gradients, inverse_sigmoid."""
import pytest
import torch
from torch import nn

from models.deformable_transformer import DeformableTransformer, build_deformable_transformer, inverse_sigmoid
from models.position_encoding import PositionEmbeddingSine2D

C, Q, LEVELS = 32, 5, 4
SIZES = [(12, 16), (6, 8), (3, 4), (2, 2)]


def make_transformer(with_box_heads: bool = True) -> DeformableTransformer:
    torch.manual_seed(0)
    transformer = DeformableTransformer(d_model=C, nhead=4, num_encoder_layers=2, num_decoder_layers=3,
                                        dim_feedforward=64, dropout=0.0, num_feature_levels=LEVELS,
                                        enc_n_points=2, dec_n_points=2)
    if with_box_heads:
        heads = nn.ModuleList(nn.Sequential(nn.Linear(C, C), nn.ReLU(), nn.Linear(C, 4)) for _ in range(3))
        transformer.decoder.bbox_embed = heads
    return transformer


def make_inputs(num_frames: int = 6, seed: int = 0):
    """Frames 0-2 unpadded; frames 3-5 padded on the bottom and right of every level."""
    generator = torch.Generator().manual_seed(seed)
    srcs, masks, positions = [], [], []
    position = PositionEmbeddingSine2D(C // 2)
    for height, width in SIZES:
        srcs.append(torch.randn(num_frames, C, height, width, generator=generator))
        mask = torch.zeros(num_frames, height, width, dtype=torch.bool)
        mask[3:, (height + 1) // 2 + 1:, :] = True
        mask[3:, :, (width + 1) // 2 + 1:] = True
        masks.append(mask)
        positions.append(position(mask))
    query_embed = torch.randn(Q, C, generator=generator)
    tgt = torch.randn(2, Q, C, generator=generator).repeat_interleave(3, dim=0)  # 2 clips x 3 frames
    return srcs, masks, positions, query_embed, tgt


def test_output_shapes():
    transformer = make_transformer()
    out = transformer(*make_inputs())
    assert out["hs"].shape == (3, 6, Q, C)
    assert out["init_reference"].shape == (6, Q, 2)
    assert out["inter_references"].shape == (3, 6, Q, 4)
    assert [tuple(m.shape) for m in out["memory"]] == [(6, C, h, w) for h, w in SIZES]
    assert out["valid_ratios"].shape == (6, LEVELS, 2)
    assert torch.all(out["valid_ratios"][:3] == 1)
    # level 0 of a padded frame: 7 of 12 rows and 9 of 16 columns are valid -> (w, h) = (9/16, 7/12)
    torch.testing.assert_close(out["valid_ratios"][3, 0], torch.tensor([9 / 16, 7 / 12]))
    no_heads = make_transformer(with_box_heads=False)(*make_inputs())
    assert no_heads["inter_references"].shape == (3, 6, Q, 2)


def test_padded_values_do_not_change_valid_outputs():
    transformer = make_transformer().eval()
    srcs, masks, positions, query_embed, tgt = make_inputs()
    with torch.no_grad():
        reference = transformer(srcs, masks, positions, query_embed, tgt)
        changed = [src.masked_fill(mask[:, None], 0) + 100 * mask[:, None] * torch.randn_like(src)
                   for src, mask in zip(srcs, masks)]
        assert not torch.equal(changed[0], srcs[0])
        out = transformer(changed, masks, positions, query_embed, tgt)
    torch.testing.assert_close(out["hs"], reference["hs"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["inter_references"], reference["inter_references"], atol=1e-5, rtol=1e-5)
    for level, mask in enumerate(masks):
        valid = ~mask[:, None].expand_as(out["memory"][level])
        torch.testing.assert_close(out["memory"][level][valid], reference["memory"][level][valid],
                                   atol=1e-5, rtol=1e-5)


def test_reference_points_stay_in_unit_interval():
    transformer = make_transformer()
    out = transformer(*make_inputs())
    for reference in (out["init_reference"], out["inter_references"]):
        assert torch.all((reference > 0) & (reference < 1))
    assert not out["inter_references"].requires_grad
    # huge deltas saturate the sigmoid to exactly 0 or 1; the clamped logit keeps every later layer finite
    for heads in transformer.decoder.bbox_embed:
        nn.init.normal_(heads[-1].weight, std=100.0)
    out = transformer(*make_inputs())
    assert torch.all((out["inter_references"] >= 0) & (out["inter_references"] <= 1))
    assert ((out["inter_references"] == 0) | (out["inter_references"] == 1)).any()
    assert torch.isfinite(out["hs"]).all()


def test_encoder_reference_points_are_pixel_centres_of_valid_content():
    transformer = make_transformer()
    valid_ratios = torch.tensor([[[0.5, 1.0], [0.5, 1.0]]])  # half the width is padding on both levels
    points = transformer.encoder.reference_points([(2, 4), (1, 2)], valid_ratios)
    assert points.shape == (1, 10, 2, 2)
    # pixel (row 0, col 1) of level 0: x = 1.5 / (0.5 * 4) = 0.75 of the content, y = 0.5 / 2 = 0.25
    torch.testing.assert_close(points[0, 1, 0], torch.tensor([0.75 * 0.5, 0.25]))


def test_gradients_reach_every_parameter():
    transformer = make_transformer()
    # MSDeformAttn starts with zero offset/attention weights, which blocks the gradient to its query (and so to
    # level_embed) until the first step; give them the values a trained model would have
    for name, parameter in transformer.named_parameters():
        if name.endswith(("sampling_offsets.weight", "attention_weights.weight")):
            nn.init.normal_(parameter, std=0.02)
    srcs, masks, positions, query_embed, tgt = make_inputs()
    query_embed.requires_grad_()
    out = transformer(srcs, masks, positions, query_embed, tgt)
    # random projections: a plain sum of a LayerNorm output has zero gradient
    generator = torch.Generator().manual_seed(1)
    loss = (out["hs"] * torch.randn(out["hs"].shape, generator=generator)).sum()
    loss = loss + sum((memory * torch.randn(memory.shape, generator=generator)).sum() for memory in out["memory"])
    # the model's box heads see hs (the references they refine are detached)
    heads = transformer.decoder.bbox_embed
    loss = loss + sum(heads[layer](out["hs"][layer]).sum() for layer in range(3))
    loss.backward()
    missing = [name for name, parameter in transformer.named_parameters() if parameter.grad is None
               or parameter.grad.abs().sum() == 0]
    assert missing == []
    assert query_embed.grad.abs().sum() > 0


def test_wrong_level_count_is_a_clear_error():
    srcs, masks, positions, query_embed, tgt = make_inputs()
    with pytest.raises(ValueError, match="4 levels"):
        make_transformer()(srcs[:3], masks[:3], positions[:3], query_embed, tgt)


def test_inverse_sigmoid():
    x = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(inverse_sigmoid(x).sigmoid(), x)
    edges = inverse_sigmoid(torch.tensor([0.0, 1.0, -0.5]))
    torch.testing.assert_close(edges, torch.log(torch.tensor([1e-5, 1 / 1e-5, 1e-5])))


def test_build_from_config():
    cfg = {"model": {"hidden_dim": 32, "nheads": 4, "enc_layers": 1, "dec_layers": 2, "dim_feedforward": 48,
                     "dropout": 0.0, "num_feature_levels": 3, "enc_n_points": 2, "dec_n_points": 3}}
    transformer = build_deformable_transformer(cfg)
    assert (transformer.d_model, transformer.num_feature_levels, transformer.decoder.num_layers) == (32, 3, 2)
    assert len(transformer.encoder.layers) == 1
    assert transformer.decoder.layers[0].cross_attn.n_points == 3
    assert transformer.decoder.layers[0].ffn.linear1.out_features == 48
