"""torch.compile of the heavy modules (inference/compilation.py, ``Predictor(compile=...)``, ``--compile``): the
compiled model gives the eager model's probabilities.

The comparisons run the model in float64, as the batching comparisons of test_predictor.py do: a compiled graph
may reorder sums, which in float64 moves the logits by ~1e-13 (unit roundoff 1.1e-16 times the depth and the
logits' size, < 100), so the float32 probabilities handed back differ by at most one float32 rounding step, 2^-24
below 1; a graph that computed anything else would differ by far more.
"""
import argparse
import copy

import numpy as np
import pytest
import torch

from inference.cli import add_model_arguments, compile_by_default
from inference.compilation import COMPILED_PARTS
from inference.predictor import Predictor
from models import build_model
from models.pretrained import load_pretrained
from tests.inference.test_predictor import FLOAT32_STEP, FLOAT64_SLACK, SENTENCES, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
VIDEO = (np.random.default_rng(2).random((4, 40, 56, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def predictor64(tiny_weights) -> Predictor:
    """The untrained tiny HCD in float64, eager."""
    torch.manual_seed(0)
    cfg = tiny_config(tiny_weights)
    model, _ = build_model(cfg, load_pretrained(tiny_weights))
    return Predictor(model.double(), cfg)


class GraphRecorder:
    """A torch.compile backend that keeps each captured graph and runs it as traced (no code generation)."""

    def __init__(self):
        self.graphs = []

    def __call__(self, graph_module, example_inputs):
        self.graphs.append(graph_module)
        return graph_module.forward


def test_compiled_heavy_modules_give_the_eager_probabilities(predictor64):
    recorder = GraphRecorder()
    model = copy.deepcopy(predictor64.model)
    keys = list(model.state_dict())
    compiled = Predictor(model, predictor64.cfg, compile=recorder)
    assert all(model.get_submodule(name)._compiled_call_impl is not None for name in COMPILED_PARTS)
    assert list(model.state_dict()) == keys  # compiled in place: checkpoints load into it unchanged

    probabilities = compiled.probabilities(VIDEO, SENTENCES[:2])
    assert len(recorder.graphs) >= len(COMPILED_PARTS)  # dynamo captured a graph of each part (graph breaks add more)
    expected = predictor64.probabilities(VIDEO, SENTENCES[:2])
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=FLOAT32_STEP + FLOAT64_SLACK)


@pytest.mark.slow
def test_inductor_compiled_predictor_equals_eager_and_follows_shape_changes(predictor64):
    """Inductor's generated C++ (minutes on two cores), then a shorter clip and another number of sentences."""
    compiled = Predictor(copy.deepcopy(predictor64.model), predictor64.cfg, compile=True)
    for frames, sentences in ((VIDEO, SENTENCES[:1]), (VIDEO[:3], SENTENCES)):
        np.testing.assert_allclose(compiled.probabilities(frames, sentences),
                                   predictor64.probabilities(frames, sentences),
                                   rtol=0, atol=FLOAT32_STEP + FLOAT64_SLACK)


def test_compile_flag_defaults_to_on_for_cuda_only():
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert parser.parse_args([]).compile is None
    assert parser.parse_args(["--compile"]).compile is True and parser.parse_args(["--no-compile"]).compile is False
    assert [compile_by_default(None, device) for device in ("cuda", "cuda:1", "cpu")] == [True, True, False]
    assert [compile_by_default(flag, "cuda") for flag in (True, False)] == [True, False]
    assert compile_by_default(True, "cpu")
