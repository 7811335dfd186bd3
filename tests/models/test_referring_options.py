"""The referring options beyond the paper (docs/architecture.md): the slot-word alignment score, the sentence as
every slot's content query, and the score of the words against the memory under each slot's mask."""
from pathlib import Path

import pytest
import torch

from models import build_model
from models.object_referring import ObjectReferring, masked_average
from models.sentence_queries import SentenceQueries
from models.text_alignment import TextAlignment
from util.config import load_config
from util.nested_tensor import NestedTensor

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "refshapes_tiny.yaml"


def make_identity(*linears: torch.nn.Linear) -> None:
    """Square linear layers set to the identity, so that the scores can be worked out by hand."""
    with torch.no_grad():
        for linear in linears:
            linear.weight.copy_(torch.eye(linear.in_features))
            linear.bias.zero_()


def test_alignment_is_the_best_real_word_match():
    alignment = TextAlignment(4)
    make_identity(alignment.query, alignment.word)
    queries = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0]]])  # [1, 2, 4]
    words = torch.tensor([[[2.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 9.0, 0, 0]]])  # the last word is padding
    padding = torch.tensor([[False, False, True]])
    logits = alignment(queries, words, padding)
    assert logits.shape == (1, 2, 1)
    assert logits.flatten().tolist() == [2.0 / 2, 3.0 / 2]  # scale 1/sqrt(4); the padded 9 never counts


def test_masked_average_by_hand():
    memory = torch.arange(8.0).reshape(1, 2, 2, 2)  # channel 0: 0 1 / 2 3, channel 1: 4 5 / 6 7
    weights = torch.tensor([[[[1.0, 0], [0, 0]], [[1.0, 1], [1, 1]], [[0.0, 0], [0, 0]], [[0.5, 0], [0, 0.5]]]])
    pooled = masked_average(memory, weights)
    assert pooled.shape == (1, 4, 2)
    assert pooled[0].tolist() == [[0.0, 4.0], [1.5, 5.5], [0.0, 0.0], [1.5, 5.5]]  # one pixel, all, none, two


def test_object_referring_scores_the_words_against_each_slots_masked_memory_and_box():
    referring = ObjectReferring(2)
    make_identity(referring.object, referring.word)
    with torch.no_grad():
        referring.box.weight.zero_()
        referring.box.weight[1, 0] = 1.0  # the box's centre x to channel 1
        referring.box.bias.zero_()
    memory = torch.tensor([[[[1.0, 0], [0, 0]], [[0.0, 0], [0, 0]]]])  # [1, 2, 2, 2]: channel 0 only top-left
    big = 20.0  # mask logits at twice the memory's size: the slots cover the top-left / bottom-right quarter
    masks = torch.full((1, 2, 4, 4), -big)
    masks[0, 0, :2, :2] = big
    masks[0, 1, 2:, 2:] = big
    masks.requires_grad_()
    boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]]], requires_grad=True)
    words = torch.tensor([[[3.0, 0], [0, 2.0], [9.0, 9.0]]])  # "top-left-ish" word, "right" word, padding
    padding = torch.tensor([[False, False, True]])
    logits = referring(memory, masks, boxes, words, padding)
    scale = 2 ** -0.5
    # slot 0: object (1, 0.25) -> max(3 * 1, 2 * 0.25); slot 1: object (0, 0.75) -> max(0, 2 * 0.75)
    torch.testing.assert_close(logits.flatten(), torch.tensor([3.0 * scale, 1.5 * scale]), rtol=1e-6, atol=1e-6)
    logits.sum().backward()
    assert masks.grad is None and boxes.grad is None  # read detached: the score does not reshape masks or boxes


def test_sentence_queries_give_every_slot_the_sentence():
    queries = SentenceQueries(num_queries=3, hidden_dim=4)
    words = torch.randn(2, 5, 4)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, 3:] = True
    content = queries(words, padding)
    assert content.shape == (2, 3, 4)
    assert torch.equal(content[:, 0], content[:, 2])
    expected = queries.sentence(words[1, :3].mean(0))
    torch.testing.assert_close(content[1, 1], expected)


@pytest.mark.parametrize("options", [{"text_alignment": True, "sentence_queries": True, "object_referring": True},
                                     {"object_referring": True}], ids=["all", "object_referring_alone"])
def test_the_options_make_the_slot_scores_depend_on_the_sentence_and_train(tiny_weights, options):
    cfg = load_config(CONFIG)
    cfg["weights"] = str(tiny_weights)
    cfg["model"].update(options)
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    assert isinstance(model.query_conditioner, SentenceQueries) == options.get("sentence_queries", False)
    frames = torch.randn(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    samples = NestedTensor(frames, torch.zeros(1, 2, 64, 64, dtype=torch.bool))
    outputs = model(samples, ["the red circle", "the blue square moving up"])
    scores = outputs["pred_logits"]  # [2 sentences, T, Q, 1]
    assert not torch.allclose(scores[0], scores[1])
    scores.sum().backward()
    assert model.object_referring.word.weight.grad.abs().sum() > 0
    if "text_alignment" in options:
        assert model.text_alignment.word.weight.grad.abs().sum() > 0
        assert model.query_conditioner.sentence.weight.grad.abs().sum() > 0
