"""Locating the compiled kernels: the CUDA extension (built by ``setup.py``) and the C++ CPU kernel (JIT).

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

_CPU_SOURCE = Path(__file__).resolve().parent / "src" / "cpu" / "ms_deform_attn_cpu.cpp"
CUDA_EXTENSION_NAME = "MultiScaleDeformableAttention"
_CUDA_INTERFACE_VERSION = 1  # hcd_interface_version exported by src/cuda/binding.cpp
# at::parallel_for expands to OpenMP pragmas in the headers: without -fopenmp it silently runs on one thread.
# The OpenMP runtime is the libgomp.so.1 that libtorch already loaded (same soname, so one runtime).
_CPU_CFLAGS = ["-O3", "-ffp-contract=fast", "-Wno-psabi"] + (["-fopenmp"] if sys.platform == "linux" else [])
_CPU_LDFLAGS = ["-fopenmp"] if sys.platform == "linux" else []


@functools.cache
def cuda_kernel() -> ModuleType | None:
    """The CUDA extension when ``cd models/ops && python setup.py build install`` has been run, else None.

    A ``MultiScaleDeformableAttention`` module from Deformable DETR / ReferFormer (same name, other signature)
    is ignored with a warning.
    """
    try:
        module = importlib.import_module(CUDA_EXTENSION_NAME)
    except ImportError:
        return None
    if getattr(module, "hcd_interface_version", None) != _CUDA_INTERFACE_VERSION:
        warnings.warn(
            f"models.ops: the installed {CUDA_EXTENSION_NAME} ({module.__file__}) is not HCD's build (probably "
            "Deformable DETR's); using the pure-PyTorch path on CUDA. Run `cd models/ops && python setup.py build "
            "install` to replace it.",
            stacklevel=2,
        )
        return None
    return module


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
