"""Locating the compiled kernels: the CUDA extension (built by ``setup.py``, else on first use) and the C++ CPU
kernel (on first use).

Both expose ``ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations,
attention_weights) -> [N, Lq, M*D]`` and ``ms_deform_attn_backward(..., grad_output) -> (grad_value,
grad_sampling_locations, grad_attention_weights)`` on contiguous float32/float64 tensors.
"""
import functools
import importlib
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

_SOURCES = Path(__file__).resolve().parent / "src"
_CPU_SOURCE = _SOURCES / "cpu" / "ms_deform_attn_cpu.cpp"
_CUDA_SOURCES = [_SOURCES / "cuda" / "binding.cpp", _SOURCES / "cuda" / "ms_deform_attn_cuda.cu"]
CUDA_EXTENSION_NAME = "MultiScaleDeformableAttention"
_CUDA_INTERFACE_VERSION = 1  # hcd_interface_version exported by src/cuda/binding.cpp
# at::parallel_for expands to OpenMP pragmas in the headers: without -fopenmp it silently runs on one thread.
# The OpenMP runtime is the libgomp.so.1 that libtorch already loaded (same soname, so one runtime).
_CPU_CFLAGS = ["-O3", "-ffp-contract=fast", "-Wno-psabi"] + (["-fopenmp"] if sys.platform == "linux" else [])
_CPU_LDFLAGS = ["-fopenmp"] if sys.platform == "linux" else []


@functools.cache
def cuda_kernel() -> ModuleType | None:
    """The CUDA extension: the installed build when present, else compiled on first use, else None.

    The installed build is the one of ``cd models/ops && python setup.py build install``; without it and with a
    CUDA toolkit (nvcc) at hand, :func:`compile_cuda_kernel` builds the same sources for the visible GPU.
    """
    return installed_cuda_kernel() or compile_cuda_kernel()


def installed_cuda_kernel() -> ModuleType | None:
    """The ``MultiScaleDeformableAttention`` module installed by ``setup.py``, else None.

    A module of that name from Deformable DETR / ReferFormer (same name, other signature) is ignored with a
    warning.
    """
    try:
        module = importlib.import_module(CUDA_EXTENSION_NAME)
    except ImportError:
        return None
    if getattr(module, "hcd_interface_version", None) != _CUDA_INTERFACE_VERSION:
        warnings.warn(
            f"models.ops: the installed {CUDA_EXTENSION_NAME} ({module.__file__}) is not HCD's build (probably "
            "Deformable DETR's); ignoring it. Run `cd models/ops && python setup.py build install` to replace it.",
            stacklevel=2,
        )
        return None
    return module


def compile_cuda_kernel() -> ModuleType | None:
    """Compiles (or loads the cached build of) the CUDA extension when nvcc is found; None without a toolkit.

    Architectures: ``TORCH_CUDA_ARCH_LIST`` when set, else the visible GPUs'. The build goes to
    ``$TORCH_EXTENSIONS_DIR`` like the CPU kernel's. A failed build warns once and returns None (the dispatcher
    then takes Triton or pure PyTorch).
    """
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return None
    try:
        return cpp_extension.load(
            name="hcd_ms_deform_attn_cuda",
            sources=[str(source) for source in _CUDA_SOURCES],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3"],
            verbose=False,
        )
    except (OSError, RuntimeError, ImportError, subprocess.CalledProcessError) as error:
        warnings.warn(
            f"models.ops: could not compile the CUDA kernel for multi-scale deformable attention with the toolkit "
            f"in {cpp_extension.CUDA_HOME} ({error}); using Triton or pure PyTorch on CUDA instead. "
            "scripts/check_cuda_build.sh shows a build that works.",
            stacklevel=2,
        )
        return None


@functools.cache
def cpu_kernel() -> ModuleType | None:
    """The C++ CPU kernel, compiled on first use (see :func:`compile_cpu_kernel`); None after one warning."""
    return compile_cpu_kernel()


def compile_cpu_kernel() -> ModuleType | None:
    """Compiles (or loads the cached build of) the C++ CPU kernel; on failure warns and returns None.

    The build goes to ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) and is reused by later
    processes until the source changes.
    """
    # Imported here: cpp_extension pulls in setuptools machinery that plain CUDA/PyTorch users never need.
    from torch.utils import cpp_extension

    try:
        return cpp_extension.load(
            name="hcd_ms_deform_attn_cpu",
            sources=[str(_CPU_SOURCE)],
            extra_cflags=_CPU_CFLAGS,
            extra_ldflags=_CPU_LDFLAGS,
            verbose=False,
        )
    except (OSError, RuntimeError, ImportError, subprocess.CalledProcessError) as error:
        warnings.warn(
            f"models.ops: could not compile the C++ CPU kernel for multi-scale deformable attention ({error}); "
            "falling back to the slower pure-PyTorch implementation. Install a C++ compiler (g++) and ninja to "
            "enable it, or set HCD_MSDA_BACKEND=pytorch to silence this warning.",
            stacklevel=2,
        )
        return None


@functools.cache
def triton_module() -> ModuleType | None:
    """:mod:`models.ops.triton_impl` when Triton is installed, else None (CPU-only torch builds lack it)."""
    try:
        return importlib.import_module("models.ops.triton_impl")
    except ImportError:
        return None


@functools.cache
def triton_works_on(device) -> bool:
    """Whether the Triton kernels compile and agree with pure PyTorch on ``device`` (a one-off check per device).

    Costs one compilation of each kernel on tiny inputs; a failure warns once and the dispatcher takes the
    pure-PyTorch path on that device.
    """
    module = triton_module()
    if module is None:
        return False
    import torch

    from models.ops.pytorch_impl import ms_deform_attn_pytorch

    generator = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[3, 4], [2, 2]])
    starts = torch.tensor([0, 12])
    value = torch.randn(1, 16, 2, 8, generator=generator)
    locations = torch.rand(1, 5, 2, 2, 2, 2, generator=generator) * 1.4 - 0.2
    weights = torch.rand(1, 5, 2, 2, 2, generator=generator)
    inputs = [t.to(device) for t in (value, shapes, starts, locations, weights)]
    leaves = [inputs[0].requires_grad_(), inputs[3].requires_grad_(), inputs[4].requires_grad_()]
    try:
        results = []
        for function in (module.ms_deform_attn_triton, ms_deform_attn_pytorch):
            out = function(*inputs)
            results.append([out, *torch.autograd.grad(out.square().sum(), leaves)])
        agree = all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(*results))
    except Exception as error:  # noqa: BLE001 -- any compiler or driver failure means: do not use Triton here
        warnings.warn(f"models.ops: the Triton kernels for multi-scale deformable attention failed on {device} "
                      f"({type(error).__name__}: {error}); using pure PyTorch there.", stacklevel=2)
        return False
    if not agree:
        warnings.warn(f"models.ops: the Triton kernels for multi-scale deformable attention disagree with pure "
                      f"PyTorch on {device}; using pure PyTorch there. Please report this with your GPU and "
                      f"Triton version.", stacklevel=2)
    return agree
