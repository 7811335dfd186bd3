"""TextEncoder (frozen tiny RoBERTa), QueryConditioner and VisionLanguageFusion."""
import warnings
from unittest import mock

import pytest
import torch
from transformers import AutoTokenizer, RobertaModel

from models.text_encoder import QueryConditioner, TextEncoder, VisionLanguageFusion, build_text_modules

HIDDEN = 16
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def roberta_parts(tiny_weights):
    folder = tiny_weights / "roberta"
    return RobertaModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def make_encoder(roberta_parts, max_length=32, dropout=0.0) -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(*roberta_parts, hidden_dim=HIDDEN, max_length=max_length, dropout=dropout)


def test_shapes_and_padding_mask(roberta_parts):
    encoder = make_encoder(roberta_parts)
    tokenizer = roberta_parts[1]
    captions = ["the red circle", "the small blue square moving to the left of the green star"]
    words, padding = encoder(captions, CPU)
    lengths = [len(tokenizer(caption)["input_ids"]) for caption in captions]
    assert words.shape == (2, max(lengths), HIDDEN)
    assert padding.dtype == torch.bool
    assert padding.sum(1).tolist() == [max(lengths) - lengths[0], 0]
    assert not padding[:, 0].any()


def test_features_do_not_depend_on_batch_padding(roberta_parts):
    encoder = make_encoder(roberta_parts).eval()
    alone, _ = encoder(["the red circle"], CPU)
    batched, padding = encoder(["the red circle", "a much longer sentence about a yellow triangle rolling"], CPU)
    torch.testing.assert_close(batched[0, ~padding[0]], alone[0], atol=1e-5, rtol=1e-5)


def test_roberta_frozen_and_kept_in_eval(roberta_parts):
    encoder = make_encoder(roberta_parts, dropout=0.5)
    encoder.train()
    assert not encoder.roberta.training and encoder.resizer.training
    assert all(not parameter.requires_grad for parameter in encoder.roberta.parameters())
    parent = torch.nn.Sequential(encoder)
    parent.train()
    assert not encoder.roberta.training
    words, _ = encoder(["the red circle"], CPU)
    words.square().sum().backward()
    assert all(parameter.grad is not None for parameter in encoder.resizer.parameters())
    assert all(parameter.grad is None for parameter in encoder.roberta.parameters())
    trainable = {name for name, parameter in encoder.named_parameters() if parameter.requires_grad}
    assert trainable == {"resizer.fc.weight", "resizer.fc.bias", "resizer.norm.weight", "resizer.norm.bias"}


def test_projection_is_layer_normalised(roberta_parts):
    encoder = make_encoder(roberta_parts).eval()
    words, _ = encoder(["the red circle"], CPU)
    assert encoder.resizer.norm.eps == 1e-12
    torch.testing.assert_close(words.mean(-1), torch.zeros(words.shape[:2]), atol=1e-5, rtol=0)


def test_truncation_warns_once_naming_the_sentence(roberta_parts):
    encoder = make_encoder(roberta_parts, max_length=6)
    long_caption = "the big purple diamond that moves upwards next to the grey box"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        words, padding = encoder(["the red circle", long_caption], CPU)
    assert len(caught) == 1
    assert long_caption in str(caught[0].message) and "max_length" in str(caught[0].message)
    assert words.shape[1] == 6 and not padding[1].any()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder(["the red circle"], CPU)
    assert caught == []


def test_one_tokenizer_pass_gives_the_tokenizers_own_truncation_and_padding(roberta_parts):
    roberta, tokenizer = roberta_parts
    counting = mock.Mock(wraps=tokenizer, pad_token_id=tokenizer.pad_token_id)
    encoder = TextEncoder(roberta, counting, hidden_dim=HIDDEN, max_length=6, dropout=0.0)
    captions = ["the red circle", "the big purple diamond that moves upwards next to the grey box", "a"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long caption's truncation warning: tested above
        tokens = encoder.tokenize(captions)
    expected = tokenizer(captions, padding="longest", truncation=True, max_length=6, return_tensors="pt")
    assert counting.call_count == 1
    assert torch.equal(tokens["input_ids"], expected["input_ids"])
    assert torch.equal(tokens["attention_mask"], expected["attention_mask"])
    assert tokens["input_ids"].shape == (3, 6)  # the long one was cut, the others padded to it


def test_empty_caption_is_an_error(roberta_parts):
    encoder = make_encoder(roberta_parts)
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="Caption 1 .* empty"):
            encoder(["the red circle", empty], CPU)


def test_non_ascii_caption(roberta_parts):
    encoder = make_encoder(roberta_parts)
    words, padding = encoder(["café ☕ 猫 über", "the red circle"], CPU)
    assert torch.isfinite(words).all()
    assert (~padding[0]).sum() > 3  # more than <s>, one token and </s>: the bytes were encoded


def test_max_length_must_fit_position_table(roberta_parts):
    with pytest.raises(ValueError, match="max_length=600"):
        make_encoder(roberta_parts, max_length=600)
    with pytest.raises(ValueError, match="max_length=2"):
        make_encoder(roberta_parts, max_length=2)


def test_query_conditioner_single_word_is_hand_computable():
    torch.manual_seed(0)
    conditioner = QueryConditioner(num_queries=3, hidden_dim=8, nheads=2)
    words = torch.randn(1, 3, 8)
    padding = torch.tensor([[False, True, True]])  # one real word: every query attends only to it
    out = conditioner(words, padding)
    attention = conditioner.fusion.attention
    value = words[0, 0] @ attention.in_proj_weight[16:].T + attention.in_proj_bias[16:]
    expected = conditioner.query_tokens * attention.out_proj(value)
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)


def test_query_conditioner_shapes_padding_and_multiplicativity():
    torch.manual_seed(0)
    conditioner = QueryConditioner(num_queries=5, hidden_dim=8, nheads=2)
    words = torch.randn(2, 4, 8)
    padding = torch.tensor([[False, False, True, True], [False, False, False, False]])
    out = conditioner(words, padding)
    assert out.shape == (2, 5, 8)
    changed = words.clone()
    changed[0, 2:] = 100.0
    torch.testing.assert_close(conditioner(changed, padding)[0], out[0])
    with torch.no_grad():
        conditioner.query_tokens[1] = 0
    assert torch.all(conditioner(words, padding)[:, 1] == 0)


def test_vision_language_fusion_uses_visual_positions():
    torch.manual_seed(0)
    fusion = VisionLanguageFusion(hidden_dim=8, nheads=2)
    visual = torch.randn(6, 10, 8)
    words = torch.randn(6, 4, 8)
    padding = torch.zeros(6, 4, dtype=torch.bool)
    plain = fusion(visual, None, words, padding)
    assert plain.shape == visual.shape
    with_pos = fusion(visual, torch.randn(6, 10, 8), words, padding)
    assert not torch.allclose(plain, with_pos)
    assert torch.all(fusion(torch.zeros_like(visual), None, words, padding) == 0)


def test_build_text_modules(roberta_parts):
    cfg = {"model": {"hidden_dim": HIDDEN, "num_queries": 5, "nheads": 4, "dropout": 0.1, "vl_fusion": True,
                     "text": {"max_length": 20}}}
    encoder, conditioner, fusion = build_text_modules(cfg, *roberta_parts)
    assert encoder.max_length == 20 and encoder.resizer.dropout.p == 0.1
    assert conditioner.query_tokens.shape == (5, HIDDEN)
    assert isinstance(fusion, VisionLanguageFusion) and fusion.attention.num_heads == 4
    cfg["model"]["vl_fusion"] = False
    assert build_text_modules(cfg, *roberta_parts)[2] is None
