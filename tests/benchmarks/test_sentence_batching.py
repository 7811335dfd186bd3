"""benchmarks/sentence_batching.py: the three ways of running a clip's sentences, the exact precision round trips,
the cap, and the bound on batched-vs-separate differences in bf16."""
from pathlib import Path

import pytest
import torch

from benchmarks import sentence_batching
from benchmarks.full_size import autocast
from models import build_model
from models.pretrained import load_pretrained
from util.config import load_config
from util.nested_tensor import NestedTensor

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "refshapes_tiny.yaml"
SENTENCES = ["the red circle", "a blue square moving left", "the small green triangle"]
PRODUCT_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
BF16_UNIT_ROUNDOFF = 2.0 ** -8  # round to nearest with 8 significant bits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_weights):
    cfg = load_config(CONFIG)
    cfg["weights"] = str(tiny_weights)
    torch.manual_seed(0)
    return build_model(cfg, load_pretrained(tiny_weights))[0].eval()


def clip() -> NestedTensor:
    return sentence_batching.random_clip(3, (28, 44), (32, 64), torch.device("cpu"))


def test_the_ways_split_the_sentences_as_named():
    sentences = ["a", "b", "c", "d", "e"]
    assert sentence_batching.calls(sentences, "naive") == [["a"], ["b"], ["c"], ["d"], ["e"]]
    assert sentence_batching.calls(sentences, "all_at_once") == [sentences]
    assert sentence_batching.calls(sentences, "two_per_pass") == [["a", "b"], ["c", "d"], ["e"]]


def test_amdahl_cap_hand_values():
    assert sentence_batching.amdahl_cap(0.0, 4) == 1.0  # nothing shared: no gain
    assert sentence_batching.amdahl_cap(1.0, 4) == 4.0  # everything shared: K times
    assert sentence_batching.amdahl_cap(0.5, 4) == pytest.approx(4 / 2.5)


def test_precisions_are_held_and_restored_exactly(model):
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for precision, frozen, trainable in (("float64", torch.float64, torch.float64),
                                         ("bfloat16", torch.bfloat16, torch.float32)):
        with sentence_batching.held_in(model, precision):
            assert next(model.backbone.frozen.parameters()).dtype == frozen
            assert model.query_embed.weight.dtype == trainable
    after = model.state_dict()  # bit for bit, the frozen weights that were held in bf16 included
    assert all(after[name].dtype == tensor.dtype and torch.equal(after[name], tensor) for name, tensor in
               before.items())


def test_differences_compare_each_way_with_the_naive_loop():
    probabilities = torch.zeros(2, 1, 2, 2)
    naive = sentence_batching.Outcome(probabilities, torch.tensor([0, 1]), torch.tensor([0.3, 0.1]))
    moved = probabilities.clone()
    moved[1, 0, 0, 0] = 0.5
    other_slot = sentence_batching.Outcome(moved, torch.tensor([0, 2]), torch.tensor([0.3, 0.1]))
    near = probabilities + 1e-3
    result = sentence_batching.differences({"naive": naive, "all_at_once": other_slot,
                                            "two_per_pass": sentence_batching.Outcome(near, naive.slots,
                                                                                      naive.margins)})
    assert result["min_slot_margin"] == pytest.approx(0.1)
    assert result["all_at_once"] == {"max_abs_diff": 0.5, "slots_agree": [True, False], "max_abs_diff_same_slot": 0.0}
    assert result["two_per_pass"]["max_abs_diff"] == pytest.approx(1e-3)
    assert result["two_per_pass"]["slots_agree"] == [True, True]


def test_float64_batching_is_exact_and_bf16_stays_within_twice_its_rounding_bound(model):
    """In float64 the three ways differ only in the order of sums (~1e-13 in the logits, so the float32
    probabilities agree to one rounding step, 2^-24). In bf16 each way rounds differently, but each stays within
    the rounding bound of test_predictor.py's bf16 test: every autocast product rounds its two inputs and its
    output (3 u, u = 2^-8), and to first order the N products' errors add up in quadrature, so the logits of a way
    are within 3 u sqrt(N) of the exact ones, norm-wise. Two ways that refine the same slot then differ by at most
    twice that, relative to the exact logits."""
    samples = clip()
    with sentence_batching.held_in(model, "float64"), torch.inference_mode():
        exact = model(NestedTensor(samples.tensors.double(), samples.mask), SENTENCES)
        outcomes = {way: sentence_batching.run_way(model, samples, SENTENCES, way, (28, 44), (28, 44), "float64")
                    for way in sentence_batching.WAYS}
    for way in sentence_batching.WAYS[1:]:
        assert torch.equal(outcomes[way].slots, outcomes["naive"].slots)
        torch.testing.assert_close(outcomes[way].probabilities, outcomes["naive"].probabilities, rtol=0,
                                   atol=2.0 ** -24 + 1e-12)

    count = [0]
    hooks = [m.register_forward_hook(lambda m, i, out: count.__setitem__(0, count[0] + (out.dtype == torch.bfloat16)))
             for m in model.modules() if isinstance(m, PRODUCT_LAYERS)]
    with sentence_batching.held_in(model, "bfloat16"), torch.inference_mode(), autocast(samples.tensors.device,
                                                                                         "bfloat16"):
        separate = [model(samples, [sentence]) for sentence in SENTENCES]
        products = count[0] // len(SENTENCES)
        batched = model(samples, SENTENCES)
    for hook in hooks:
        hook.remove()
    assert products > 100  # the products do run in bf16
    bound = 2 * 3 * BF16_UNIT_ROUNDOFF * products ** 0.5
    compared = 0
    for index, alone in enumerate(separate):
        if alone["selected_query"][0] != batched["selected_query"][index]:
            continue  # another slot: a different mask, not a rounding of the same one
        difference = batched["pred_masks"][index].float() - alone["pred_masks"][0].float()
        relative = float(difference.norm() / exact["pred_masks"][index].norm())
        assert 0 < relative < bound, (index, relative, bound)
        compared += 1
    assert compared >= 2
