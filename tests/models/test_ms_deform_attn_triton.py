"""The Triton multi-scale deformable attention: values and gradients against float64 references, half precision,
batch, the dispatcher's CUDA choice and its self-check.

Without a GPU the kernels run in Triton's interpreter (numpy, on CPU tensors), which is slow: shapes stay tiny.
With a GPU the same tests run the compiled kernels on CUDA, and the last test compares every CUDA backend.
"""
import pytest
import torch

from models.ops import kernels, ms_deform_attn, ms_deform_attn_grid_sample, ms_deform_attn_pytorch
from models.ops import ms_deform_attn_function
from models.ops.ms_deform_attn_function import BACKEND_ENV
from tests.models.msda_reference import loop_reference, make_inputs

pytest.importorskip("triton", reason="Triton is not installed (CPU-only torch builds lack it)")
from models.ops import triton_impl  # noqa: E402
from models.ops.triton_impl import ms_deform_attn_triton  # noqa: E402

ON_GPU = torch.cuda.is_available()
if not (ON_GPU or triton_impl.INTERPRETED):
    raise RuntimeError("no GPU and Triton is not in interpreter mode: tests/conftest.py sets TRITON_INTERPRET=1 "
                       "before triton is imported; keep it there")
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# Three levels: a one-row level, odd sizes; S = 20 + 6 + 7 = 33.
LEVELS = torch.tensor([[4, 5], [2, 3], [1, 7]])


def on_device(inputs):
    return [t.to(DEVICE) for t in inputs]


def with_grads(function, inputs, grad_output):
    """function's output and the gradients of <output, grad_output> w.r.t. value, locations and weights."""
    value, shapes, starts, locations, weights = inputs
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    out = function(leaves[0], shapes, starts, leaves[1], leaves[2])
    return [out, *torch.autograd.grad(out, leaves, grad_output)]


@pytest.mark.parametrize("lq,tile", [(5, None), (7, 8)])  # one query block / several (a tiny tile forces them)
def test_forward_matches_the_loop_reference(lq, tile, monkeypatch):
    if tile is not None:
        monkeypatch.setattr(triton_impl, "_TILE_ELEMENTS", tile)
    inputs = make_inputs(n=2, lq=lq, m=2, d=3, p=2, shapes=LEVELS, seed=4)
    assert (inputs[3] < 0).any() and (inputs[3] > 1).any()  # some samples off the map
    out = ms_deform_attn_triton(*on_device(inputs))
    assert out.dtype == torch.float64 and out.shape == (2, lq, 6)
    torch.testing.assert_close(out.cpu(), loop_reference(*inputs), rtol=1e-12, atol=1e-12)


def test_float32_forward_matches_the_loop_reference():
    inputs = make_inputs(n=1, lq=4, m=3, d=4, p=3, shapes=LEVELS, seed=5, dtype=torch.float32)
    out = ms_deform_attn_triton(*on_device(inputs))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.cpu().double(), loop_reference(*inputs), rtol=1e-5, atol=1e-6)


def test_gradients_match_grid_sample_autograd_and_finite_differences():
    inputs = make_inputs(n=2, lq=3, m=2, d=3, p=2, shapes=LEVELS, seed=6)
    grad_output = torch.randn(2, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    out, *grads = with_grads(ms_deform_attn_triton, on_device(inputs), grad_output.to(DEVICE))
    _, *expected = with_grads(ms_deform_attn_grid_sample, inputs, grad_output)
    for grad, reference in zip(grads, expected):
        assert grad.dtype == torch.float64
        torch.testing.assert_close(grad.cpu(), reference, rtol=1e-10, atol=1e-12)
    assert grads[1].abs().sum() > 0 and (grads[1] == 0).any()  # inside points move, points far off do not

    # Directional central differences of <out, grad_output> along random directions of each input.
    value, shapes, starts, locations, weights = on_device(inputs)
    generator = torch.Generator().manual_seed(8)
    eps = 1e-6
    for index, tensor in ((0, value), (1, locations), (2, weights)):
        direction = torch.randn(tensor.shape, dtype=torch.float64, generator=generator).to(DEVICE)
        moved = [[value, locations, weights] for _ in range(2)]
        moved[0][index] = tensor + eps * direction
        moved[1][index] = tensor - eps * direction
        plus, minus = ((ms_deform_attn_triton(v, shapes, starts, loc, w) * grad_output.to(DEVICE)).sum()
                       for v, loc, w in moved)
        numeric = (plus - minus) / (2 * eps)
        torch.testing.assert_close(numeric, (grads[index] * direction).sum(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_half_precision_inputs_are_read_directly_and_computed_in_float32(dtype, tolerance):
    value, shapes, starts, locations, weights = make_inputs(n=1, lq=4, m=2, d=4, p=2, shapes=LEVELS, seed=9,
                                                            dtype=torch.float32)
    half = [t.to(dtype) for t in (value, locations, weights)]
    upcast = [t.double() for t in half]  # what float32 compute sees: only the output rounding remains
    grad_output = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(10))
    out, *grads = with_grads(ms_deform_attn_triton, on_device([half[0], shapes, starts, half[1], half[2]]),
                             grad_output.to(DEVICE, dtype))
    assert out.dtype == dtype and all(grad.dtype == dtype for grad in grads)
    torch.testing.assert_close(out.cpu().double(), loop_reference(upcast[0], shapes, starts, upcast[1], upcast[2]),
                               rtol=tolerance, atol=tolerance)
    _, *expected = with_grads(ms_deform_attn_grid_sample, [upcast[0], shapes, starts, upcast[1], upcast[2]],
                              grad_output.to(dtype).double())
    for grad, reference in zip(grads, expected):
        torch.testing.assert_close(grad.cpu().double(), reference, rtol=tolerance, atol=tolerance * 4)


def test_any_batch_and_nan_locations():
    inputs = make_inputs(n=9, lq=2, m=1, d=2, p=1, shapes=LEVELS, seed=11)
    inputs[3][0, 0] = float("nan")  # reads zero, like a point far off the map
    out = ms_deform_attn_triton(*on_device(inputs)).cpu()
    assert torch.isfinite(out).all()
    far = inputs[3].clone()
    far[0, 0] = 5.0
    torch.testing.assert_close(out, ms_deform_attn_pytorch(*inputs[:3], far, inputs[4]), rtol=1e-12, atol=1e-12)


def test_no_queries_gives_an_empty_output():
    value, shapes, starts, locations, weights = make_inputs(n=2, lq=0, m=2, d=3, p=2, shapes=LEVELS)
    out = ms_deform_attn_triton(*on_device([value, shapes, starts, locations, weights]))
    assert out.shape == (2, 0, 6)


def test_forced_backend_reads_bf16_value_and_weights_and_float32_locations(monkeypatch):
    """The dispatcher hands Triton bf16 value and weights as they are (no float32 copy) and the locations in
    float32. The values are those of float64 arithmetic on the bf16-rounded inputs up to two roundings: the float32
    arithmetic of the L * P * 4 = 24 bilinear terms (each below 1 here, each through at most six float32 roundings:
    the corner weight from the location, the products with the attention weight and the value, the sum; 24 * 6 *
    2^-24 < 1e-5) and the output's
    conversion to bf16 (8 significant bits): at most one unit in the last place, 2^-7 of the value (compiled Triton
    rounds to nearest, half of that; its interpreter truncates)."""
    calls, real = [], triton_impl._forward

    def spy(value, shapes, starts, locations, weights):
        calls.append((value.dtype, locations.dtype, weights.dtype))
        return real(value, shapes, starts, locations, weights)

    monkeypatch.setattr(triton_impl, "_forward", spy)
    monkeypatch.setenv(BACKEND_ENV, "triton")
    value, shapes, starts, locations, weights = make_inputs(n=1, lq=3, m=2, d=4, p=2, shapes=LEVELS, seed=12,
                                                            dtype=torch.float32)
    half = [t.to(torch.bfloat16) for t in (value, locations, weights)]
    out = ms_deform_attn(*on_device([half[0], shapes, starts, half[1], half[2]]))
    assert calls == [(torch.bfloat16, torch.float32, torch.bfloat16)] and out.dtype == torch.bfloat16
    expected = loop_reference(half[0].double(), shapes, starts, half[1].double(), half[2].double())
    assert (out.cpu().double() - expected).abs().le(2.0 ** -7 * expected.abs() + 1e-5).all()


def test_cuda_backends_in_preference_order(monkeypatch):
    """On CUDA tensors auto offers Triton (when it passes its check) and the extension (when there is one), which
    the first call of a shape family then times; with neither, pure PyTorch."""
    cuda = torch.device("cuda")
    monkeypatch.setenv(BACKEND_ENV, "auto")
    for extension, triton_works, expected in ((object(), True, ["triton", "cuda_extension"]),
                                              (object(), False, ["cuda_extension"]),
                                              (None, True, ["triton"]), (None, False, ["pytorch"])):
        monkeypatch.setattr(kernels, "cuda_kernel", lambda extension=extension: extension)
        monkeypatch.setattr(kernels, "triton_works_on", lambda device, works=triton_works: works)
        backends = ms_deform_attn_function.available_backends(cuda)
        assert [backend.name for backend in backends] == expected
        assert [backend.reads_half for backend in backends] == [name == "triton" for name in expected]
    # On CPU tensors auto never takes Triton (the interpreter is for tests only).
    assert ms_deform_attn_function.available_backends(torch.device("cpu"))[0].name in ("cpp_cpu", "pytorch")


def test_self_check_accepts_working_kernels_and_rejects_failing_ones(monkeypatch):
    kernels.triton_works_on.cache_clear()
    assert kernels.triton_works_on(DEVICE)
    kernels.triton_works_on.cache_clear()

    def broken(*args):
        raise RuntimeError("PTX assembly failed")

    monkeypatch.setattr(triton_impl, "ms_deform_attn_triton", broken)
    with pytest.warns(UserWarning, match="PTX assembly failed"):
        assert not kernels.triton_works_on(DEVICE)
    monkeypatch.setattr(triton_impl, "ms_deform_attn_triton", lambda *args: ms_deform_attn_pytorch(*args) * 1.01)
    kernels.triton_works_on.cache_clear()
    with pytest.warns(UserWarning, match="disagree"):
        assert not kernels.triton_works_on(DEVICE)
    kernels.triton_works_on.cache_clear()


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_backends_agree(dtype, monkeypatch):
    inputs = make_inputs(n=3, lq=50, m=8, d=32, p=4, shapes=torch.tensor([[24, 40], [12, 20], [6, 10], [3, 5]]),
                         seed=13, dtype=torch.float32)
    grad_output = torch.randn(3, 50, 256, generator=torch.Generator().manual_seed(14))
    results = {}
    for backend in ("pytorch", "cpp", "triton"):
        if backend == "cpp" and kernels.cuda_kernel() is None:
            continue
        monkeypatch.setenv(BACKEND_ENV, backend)
        half = [t.to(DEVICE, dtype) if t.is_floating_point() else t.to(DEVICE) for t in inputs]
        results[backend] = [t.float().cpu() for t in with_grads(ms_deform_attn, half, grad_output.to(DEVICE, dtype))]
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    for backend, tensors in results.items():
        for got, expected in zip(tensors, results["pytorch"]):
            torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance, msg=backend)
