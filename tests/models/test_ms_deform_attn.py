"""Multi-scale deformable attention: every backend against a plain-loop bilinear reference, gradients,
dtypes, batch sizes, the dispatcher and the MSDeformAttn layer."""
import warnings

import pytest
import torch

from models.ops import MSDeformAttn, ms_deform_attn, ms_deform_attn_grid_sample, ms_deform_attn_pytorch
from models.ops import kernels
from models.ops.ms_deform_attn_function import BACKEND_ENV
from tests.models.msda_reference import loop_reference, make_inputs

@pytest.fixture(params=["pytorch", "grid_sample", "cpp"])
def backend(request, monkeypatch):
    """A callable with ms_deform_attn's signature for each implementation."""
    if request.param == "pytorch":
        return ms_deform_attn_pytorch
    if request.param == "grid_sample":
        return ms_deform_attn_grid_sample
    monkeypatch.setenv(BACKEND_ENV, "cpp")  # compiled C++ kernel, an error if it does not build
    return ms_deform_attn


def test_every_backend_matches_the_loop_reference(backend):
    inputs = make_inputs()
    assert (inputs[3] < 0).any() and (inputs[3] > 1).any()  # some samples off the image
    torch.testing.assert_close(backend(*inputs), loop_reference(*inputs), rtol=1e-10, atol=1e-12)


def test_hand_computed_samples(backend):
    # One 2x2 level holding 1, 2 / 3, 4; pixel centres at 0.25 and 0.75.
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)
    shapes, starts = torch.tensor([[2, 2]]), torch.tensor([0])
    points = [(0.5, 0.5), (0.25, 0.75), (0.0, 0.25), (-0.25, 0.25), (1.5, 0.5), (0.75, 1.0)]
    expected = [2.5, 3.0, 0.5, 0.0, 0.0, 2.0]  # mean | pixel 3 | half of pixel 1 | off | off | half of pixel 4
    locations = torch.tensor(points, dtype=torch.float64).view(1, len(points), 1, 1, 1, 2)
    weights = torch.ones(1, len(points), 1, 1, 1, dtype=torch.float64)
    out = backend(value, shapes, starts, locations, weights)
    torch.testing.assert_close(out.view(-1), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("name", ["pytorch", "cpp"])
def test_gradcheck_float64(name, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, name)
    value, shapes, starts, locations, weights = make_inputs(n=1, lq=2, m=2, d=3, low=0.05, high=0.95)
    inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w), inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("channels", [32, 5])  # the compiled fixed-width path and the generic one
def test_cpp_kernel_equals_pure_pytorch(dtype, tolerance, channels, monkeypatch):
    value, shapes, starts, locations, weights = make_inputs(n=3, lq=7, m=3, d=channels, p=3, dtype=dtype, seed=1)
    grad_output = torch.randn(3, 7, 3 * channels, dtype=dtype, generator=torch.Generator().manual_seed(2))
    results = {}
    for name in ("pytorch", "cpp"):
        monkeypatch.setenv(BACKEND_ENV, name)
        inputs = [t.clone().requires_grad_() for t in (value, locations, weights)]
        out = ms_deform_attn(inputs[0], shapes, starts, inputs[1], inputs[2])
        results[name] = [out, *torch.autograd.grad(out, inputs, grad_output)]
    for pure, compiled in zip(results["pytorch"], results["cpp"]):
        assert compiled.dtype == dtype
        torch.testing.assert_close(compiled, pure, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", ["pytorch", "cpp"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(name, dtype, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, name)
    value, shapes, starts, locations, weights = make_inputs(d=8, dtype=torch.float32, low=0.0, high=1.0)
    expected = ms_deform_attn(value, shapes, starts, locations, weights)
    value_half = value.to(dtype).requires_grad_()
    out = ms_deform_attn(value_half, shapes, starts, locations.to(dtype), weights.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert value_half.grad.dtype == dtype and value_half.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["pytorch", "cpp"])
def test_large_batch_has_no_im2col_limit(name, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, name)
    inputs = make_inputs(n=70, lq=2, m=2, d=4, p=1, dtype=torch.float32)
    out = ms_deform_attn(*inputs)
    assert out.shape == (70, 2, 8)
    torch.testing.assert_close(out, ms_deform_attn_grid_sample(*inputs), rtol=1e-5, atol=1e-6)


def test_nan_locations_read_zero_in_pure_and_cpp(monkeypatch):
    value, shapes, starts, locations, weights = make_inputs()
    locations[0, 0] = float("nan")
    for name in ("pytorch", "cpp"):
        monkeypatch.setenv(BACKEND_ENV, name)
        out = ms_deform_attn(value, shapes, starts, locations, weights)
        assert torch.isfinite(out).all()
        clean = locations.clone()
        clean[0, 0] = 5.0  # far outside: no contribution either
        torch.testing.assert_close(out, ms_deform_attn(value, shapes, starts, clean, weights))


def test_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="auto, pytorch, cpp, triton"):
        ms_deform_attn(*make_inputs())


def test_auto_backend_uses_the_cpp_kernel_on_cpu(monkeypatch):
    calls = []
    real = kernels.cpu_kernel()
    assert real is not None, "the C++ CPU kernel should compile on this machine"

    class Spy:
        def ms_deform_attn_forward(self, *args):
            calls.append("forward")
            return real.ms_deform_attn_forward(*args)

    monkeypatch.setenv(BACKEND_ENV, "auto")
    monkeypatch.setattr("models.ops.kernels.cpu_kernel", lambda: Spy())
    inputs = make_inputs()
    torch.testing.assert_close(ms_deform_attn(*inputs), loop_reference(*inputs))
    assert calls == ["forward"]


def test_failed_compilation_warns_and_falls_back(monkeypatch):
    from torch.utils import cpp_extension

    def broken_load(**_):
        raise RuntimeError("Error building extension: no compiler")

    monkeypatch.setattr(cpp_extension, "load", broken_load)
    with pytest.warns(UserWarning, match="falling back to the slower pure-PyTorch"):
        assert kernels.compile_cpu_kernel() is None
    # The dispatcher then takes the pure path without further warnings.
    monkeypatch.setenv(BACKEND_ENV, "auto")
    monkeypatch.setattr("models.ops.kernels.cpu_kernel", lambda: None)
    inputs = make_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(ms_deform_attn(*inputs), loop_reference(*inputs))
    monkeypatch.setenv(BACKEND_ENV, "cpp")
    with pytest.raises(RuntimeError, match="no compiled multi-scale deformable attention kernel"):
        ms_deform_attn(*inputs)


def test_bad_shapes_raise_value_error():
    value, shapes, starts, locations, weights = make_inputs()
    with pytest.raises(ValueError, match="sampling_locations"):
        ms_deform_attn(value, shapes, starts, locations[..., :1, :, :], weights)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, shapes, starts, locations, weights[..., :1])


@pytest.mark.skipif(not (torch.cuda.is_available() and kernels.cuda_kernel() is not None),
                    reason="needs a CUDA device and the MultiScaleDeformableAttention extension (models/ops/setup.py)")
@pytest.mark.parametrize("channels", [32, 7])
def test_cuda_kernel_equals_pure_pytorch(channels, monkeypatch):
    value, shapes, starts, locations, weights = make_inputs(n=3, lq=9, m=4, d=channels, p=3, seed=3)
    grad_output = torch.randn(3, 9, 4 * channels, dtype=torch.float64)
    results = {}
    for name, device in (("pytorch", "cpu"), ("cpp", "cuda")):
        monkeypatch.setenv(BACKEND_ENV, name)
        inputs = [t.to(device).requires_grad_() for t in (value, locations, weights)]
        out = ms_deform_attn(inputs[0], shapes.to(device), starts.to(device), inputs[1], inputs[2])
        grads = torch.autograd.grad(out, inputs, grad_output.to(device))
        results[name] = [t.cpu() for t in (out, *grads)]
    for pure, compiled in zip(results["pytorch"], results["cpp"]):
        torch.testing.assert_close(compiled, pure, rtol=1e-9, atol=1e-9)


# --- MSDeformAttn ---------------------------------------------------------------------------------------------

LEVEL_SHAPES = torch.tensor([[6, 8], [3, 4]])
LEVEL_STARTS = torch.tensor([0, 48])


def test_d_model_must_divide_into_heads():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        MSDeformAttn(d_model=30, n_heads=8)


def test_initial_offsets_form_a_direction_grid_and_attention_is_uniform():
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    bias = layer.sampling_offsets.bias.view(4, 2, 3, 2)
    # Head 0 looks right (+x), head 1 down (+y), head 2 left, head 3 up; point p is p+1 pixels away.
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    expected = directions.view(4, 1, 1, 2) * torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1)
    torch.testing.assert_close(bias, expected.expand(4, 2, 3, 2), atol=1e-6, rtol=0)
    assert layer.sampling_offsets.weight.abs().sum() == 0
    assert layer.attention_weights.weight.abs().sum() == 0 and layer.attention_weights.bias.abs().sum() == 0


def _layer_inputs(ref_dims, seed=0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(2, 5, 16, generator=generator)
    flatten = torch.randn(2, 60, 16, generator=generator)
    reference = 0.2 + 0.6 * torch.rand(2, 5, 2, ref_dims, generator=generator)
    return query, reference, flatten


@pytest.mark.parametrize("ref_dims", [2, 4])
def test_layer_matches_manual_sampling(ref_dims):
    torch.manual_seed(0)
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    with torch.no_grad():
        layer.sampling_offsets.weight.normal_(std=0.5)
        layer.attention_weights.weight.normal_()
    query, reference, flatten = _layer_inputs(ref_dims)
    out = layer(query, reference, flatten, LEVEL_SHAPES, LEVEL_STARTS)

    offsets = layer.sampling_offsets(query).view(2, 5, 4, 2, 3, 2)
    weights = layer.attention_weights(query).view(2, 5, 4, 6).softmax(-1).view(2, 5, 4, 2, 3)
    value = layer.value_proj(flatten).view(2, 60, 4, 4)
    locations = torch.empty(2, 5, 4, 2, 3, 2)
    for level, (h, w) in enumerate(LEVEL_SHAPES.tolist()):
        ref = reference[:, :, None, level, None, :]
        if ref_dims == 2:
            step = torch.tensor([1.0 / w, 1.0 / h])
            locations[:, :, :, level] = ref + offsets[:, :, :, level] * step
        else:
            locations[:, :, :, level] = ref[..., :2] + offsets[:, :, :, level] / 3 * ref[..., 2:] * 0.5
    expected = layer.output_proj(ms_deform_attn_grid_sample(value, LEVEL_SHAPES, LEVEL_STARTS, locations, weights))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_padding_positions_do_not_matter():
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    query, reference, flatten = _layer_inputs(2)
    mask = torch.zeros(2, 60, dtype=torch.bool)
    mask[:, 40:48] = True
    mask[1, 50:] = True
    changed = flatten.clone()
    changed[mask] = 100.0
    out = layer(query, reference, flatten, LEVEL_SHAPES, LEVEL_STARTS, mask)
    torch.testing.assert_close(layer(query, reference, changed, LEVEL_SHAPES, LEVEL_STARTS, mask), out)
    assert not torch.allclose(layer(query, reference, changed, LEVEL_SHAPES, LEVEL_STARTS), out)


def test_layer_under_autocast_runs_sampling_in_float32():
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    query, reference, flatten = _layer_inputs(2)
    expected = layer(query, reference, flatten, LEVEL_SHAPES, LEVEL_STARTS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(query, reference, flatten, LEVEL_SHAPES, LEVEL_STARTS)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)
    out.float().sum().backward()
    assert layer.sampling_offsets.weight.grad is not None


def test_layer_rejects_mismatched_inputs():
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    query, reference, flatten = _layer_inputs(2)
    with pytest.raises(ValueError, match="sum to 60"):
        layer(query, reference, flatten[:, :59], LEVEL_SHAPES, LEVEL_STARTS)
    with pytest.raises(ValueError, match="reference_points"):
        layer(query, reference[..., :1], flatten, LEVEL_SHAPES, LEVEL_STARTS)
