"""Locating the compiled kernels: the CUDA extension (built by ``setup.py``) and the C++ CPU kernel (JIT).

Both expose ``ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations,
attention_weights) -> [N, Lq, M*D]`` and ``ms_deform_attn_backward(..., grad_output) -> (grad_value,
grad_sampling_locations, grad_attention_weights)`` on contiguous float32/float64 tensors.
"""
import functools
import importlib
import subprocess
import warnings
from pathlib import Path
from types import ModuleType

_CPU_SOURCE = Path(__file__).resolve().parent / "src" / "cpu" / "ms_deform_attn_cpu.cpp"
CUDA_EXTENSION_NAME = "MultiScaleDeformableAttention"


@functools.cache
def cuda_kernel() -> ModuleType | None:
    """The CUDA extension when ``cd models/ops && python setup.py build install`` has been run, else None."""
    try:
        return importlib.import_module(CUDA_EXTENSION_NAME)
    except ImportError:
        return None


@functools.cache
def cpu_kernel() -> ModuleType | None:
    """The C++ CPU kernel, compiled on first use into the torch extensions cache; None (warned once) on failure.

    The build goes to ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) and is reused by later
    processes until the source changes.
    """
    # Imported here: cpp_extension pulls in setuptools machinery that plain CUDA/PyTorch users never need.
    from torch.utils import cpp_extension

    try:
        return cpp_extension.load(
            name="hcd_ms_deform_attn_cpu",
            sources=[str(_CPU_SOURCE)],
            extra_cflags=["-O3"],
            verbose=False,
        )
    except (OSError, RuntimeError, ImportError, subprocess.CalledProcessError) as error:
        warnings.warn(
            f"models.ops: could not compile the C++ CPU kernel for multi-scale deformable attention ({error}); "
            "falling back to the slower pure-PyTorch implementation. Install a C++ compiler (g++) and ninja to "
            "enable it, or set HCD_MSDA_BACKEND=pytorch to silence this warning.",
            stacklevel=3,
        )
        return None
