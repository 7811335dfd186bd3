"""The referring options beyond the paper (docs/architecture.md): the slot-word alignment score and the sentence as
every slot's content query."""
from pathlib import Path

import torch

from models import build_model
from models.sentence_queries import SentenceQueries
from models.text_alignment import TextAlignment
from util.config import load_config
from util.nested_tensor import NestedTensor

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "refshapes_tiny.yaml"


def test_alignment_is_the_best_real_word_match():
    alignment = TextAlignment(4)
    with torch.no_grad():
        for linear in (alignment.query, alignment.word):
            linear.weight.copy_(torch.eye(4))
            linear.bias.zero_()
    queries = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0]]])  # [1, 2, 4]
    words = torch.tensor([[[2.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 9.0, 0, 0]]])  # the last word is padding
    padding = torch.tensor([[False, False, True]])
    logits = alignment(queries, words, padding)
    assert logits.shape == (1, 2, 1)
    assert logits.flatten().tolist() == [2.0 / 2, 3.0 / 2]  # scale 1/sqrt(4); the padded 9 never counts


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


def test_both_options_make_the_slot_scores_depend_on_the_sentence_and_train(tiny_weights):
    cfg = load_config(CONFIG)
    cfg["weights"] = str(tiny_weights)
    cfg["model"].update(text_alignment=True, sentence_queries=True)
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    assert isinstance(model.query_conditioner, SentenceQueries)
    frames = torch.randn(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    samples = NestedTensor(frames, torch.zeros(1, 2, 64, 64, dtype=torch.bool))
    outputs = model(samples, ["the red circle", "the blue square moving up"])
    scores = outputs["pred_logits"]  # [2 sentences, T, Q, 1]
    assert not torch.allclose(scores[0], scores[1])
    scores.sum().backward()
    assert model.text_alignment.word.weight.grad.abs().sum() > 0
    assert model.query_conditioner.sentence.weight.grad.abs().sum() > 0
