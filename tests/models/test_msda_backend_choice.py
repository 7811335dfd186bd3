"""The multi-scale deformable attention dispatch picks the faster of several backends by timing each once per
device and shape family (models/ops/backend_choice.py), here with stand-in backends and a fake timer."""
import pytest
import torch

from models.ops import backend_choice, ms_deform_attn, ms_deform_attn_function, ms_deform_attn_pytorch
from models.ops.ms_deform_attn_function import BACKEND_ENV, Backend
from tests.models.msda_reference import loop_reference, make_inputs


def test_each_key_is_measured_once_and_the_fastest_kept():
    chooser = backend_choice.FastestBackend()
    measured = []
    seconds = {"triton": 2.0, "cuda_extension": 1.0}

    def measure(name):
        measured.append(name)
        return seconds[name]

    names = ("triton", "cuda_extension")
    assert chooser.choose("family A", names, measure) == "cuda_extension"
    seconds["triton"] = 0.5  # a later, different timing must not change a choice already made
    assert chooser.choose("family A", names, measure) == "cuda_extension"
    assert measured == ["triton", "cuda_extension"]
    assert chooser.choose("family B", names, measure) == "triton"
    assert measured == ["triton", "cuda_extension"] * 2
    assert chooser.choose("family C", ("triton",), measure) == "triton" and len(measured) == 4  # nothing to time
    assert backend_choice.FastestBackend().choose("tie", names, lambda name: 1.0) == "triton"  # ties: the first


def test_shape_families_round_rows_to_powers_of_two():
    value, _, _, locations, weights = make_inputs(n=2, lq=5, m=2, d=3, p=2)
    family = backend_choice.shape_family(value, locations, weights, needs_grad=False)
    more_queries = make_inputs(n=2, lq=7, m=2, d=3, p=2)[3]  # 2 * 7 = 14 rows: the bucket of 2 * 5 = 10
    assert backend_choice.shape_family(value, more_queries, weights, needs_grad=False) == family
    many_queries = make_inputs(n=2, lq=9, m=2, d=3, p=2)[3]  # 18 rows: the next bucket
    assert backend_choice.shape_family(value, many_queries, weights, needs_grad=False) != family
    assert backend_choice.shape_family(value, locations, weights, needs_grad=True) != family
    assert backend_choice.shape_family(value.float(), locations, weights, needs_grad=False) != family
    assert [backend_choice.power_of_two_bucket(count) for count in (0, 1, 2, 3, 4, 5, 1024, 1025)] == \
        [0, 0, 1, 2, 2, 3, 10, 11]


def test_time_call_warms_up_then_takes_the_median(monkeypatch):
    ticks = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0])  # runs of 5, 1 and 3 seconds
    monkeypatch.setattr(backend_choice.time, "perf_counter", lambda: next(ticks))
    calls = []
    assert backend_choice.time_call(lambda: calls.append(1), torch.device("cpu")) == 3.0
    assert len(calls) == 1 + backend_choice.TIMED_RUNS


def test_timing_a_backward_pass_leaves_the_callers_tensors_alone():
    inputs = list(make_inputs())
    seen = []

    def function(value, shapes, starts, locations, weights):
        seen.append((value.requires_grad, locations.requires_grad, weights.requires_grad))
        return ms_deform_attn_pytorch(value, shapes, starts, locations, weights)

    backend_choice.forward_and_backward(function, inputs)()
    assert seen == [(True, True, True)]
    assert not any(t.requires_grad or t.grad is not None for t in inputs)


class StandIns:
    """Two correct backends that record their calls, and a fake timer that says ``slow`` takes 3 s, ``fast`` 1 s."""

    def __init__(self):
        self.calls, self.timed = [], []
        self.backends = [self.backend("slow"), self.backend("fast")]

    def backend(self, name):
        def function(*inputs):
            self.calls.append(name)
            return ms_deform_attn_pytorch(*inputs)
        return Backend(name, function)

    def time_backend(self, backend, inputs, needs_grad):
        self.timed.append((backend.name, needs_grad))
        return {"slow": 3.0, "fast": 1.0}[backend.name]


@pytest.fixture
def stand_ins(monkeypatch):
    stand_ins = StandIns()
    monkeypatch.setattr(ms_deform_attn_function, "_FASTEST", backend_choice.FastestBackend())
    monkeypatch.setattr(ms_deform_attn_function, "available_backends", lambda device: stand_ins.backends)
    monkeypatch.setattr(ms_deform_attn_function, "time_backend", stand_ins.time_backend)
    return stand_ins


def test_auto_dispatch_times_once_per_family_then_runs_the_faster(stand_ins):
    inputs = make_inputs(n=2, lq=5)
    for _ in range(3):
        torch.testing.assert_close(ms_deform_attn(*inputs), loop_reference(*inputs), rtol=1e-10, atol=1e-12)
    assert stand_ins.timed == [("slow", False), ("fast", False)]
    assert stand_ins.calls == ["fast"] * 3
    assert list(ms_deform_attn_function.chosen_backends().values()) == ["fast"]

    leaves = [t.clone().requires_grad_() for t in (inputs[0], inputs[3], inputs[4])]
    ms_deform_attn(leaves[0], inputs[1], inputs[2], leaves[1], leaves[2]).sum().backward()  # a training call
    ms_deform_attn(*make_inputs(n=2, lq=40))  # more queries
    assert stand_ins.timed[2:] == [("slow", True), ("fast", True), ("slow", False), ("fast", False)]
    assert stand_ins.calls[3:] == ["fast", "fast"] and leaves[0].grad.abs().sum() > 0


def test_a_forced_backend_is_never_timed(monkeypatch):
    measured = []
    monkeypatch.setattr(ms_deform_attn_function, "time_backend", lambda *args: measured.append(args) or 1.0)
    monkeypatch.setenv(BACKEND_ENV, "pytorch")
    inputs = make_inputs()
    torch.testing.assert_close(ms_deform_attn(*inputs), loop_reference(*inputs), rtol=1e-10, atol=1e-12)
    assert ms_deform_attn_function.available_backends(torch.device("cuda")) == [ms_deform_attn_function.PYTORCH]
    assert measured == []


def test_real_timing_of_two_cpu_backends_picks_one_and_computes_right(monkeypatch):
    """The dispatcher's own timer on two real CPU backends (the same function under two names): it times the shape
    family once, records one choice, and the result is right."""
    monkeypatch.setattr(ms_deform_attn_function, "_FASTEST", backend_choice.FastestBackend())
    candidates = [ms_deform_attn_function.PYTORCH, Backend("pytorch_again", ms_deform_attn_function.PYTORCH.function)]
    monkeypatch.setattr(ms_deform_attn_function, "available_backends", lambda device: candidates)
    inputs = make_inputs()
    for _ in range(2):  # the second call reuses the choice
        torch.testing.assert_close(ms_deform_attn(*inputs), loop_reference(*inputs), rtol=1e-10, atol=1e-12)
    assert len(ms_deform_attn_function.chosen_backends()) == 1
