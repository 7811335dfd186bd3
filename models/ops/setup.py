"""Builds the CUDA extension ``MultiScaleDeformableAttention`` used by ``models.ops`` on CUDA tensors.

    cd models/ops && python setup.py build install

Needs the CUDA toolkit (nvcc) matching the installed PyTorch. Without it, ``models.ops`` keeps working on the
pure-PyTorch path (and on the CPU with its own JIT-compiled C++ kernel); nothing else in HCD needs this build.
Set ``TORCH_CUDA_ARCH_LIST`` (e.g. "8.0;9.0") to choose GPU architectures when building without a visible GPU.
"""
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension

SOURCES = "src/cuda"  # relative: setuptools wants relative source paths, and the build runs from models/ops


def cuda_extension() -> CUDAExtension:
    if CUDA_HOME is None:
        raise SystemExit("models/ops/setup.py: no CUDA toolkit found (CUDA_HOME is unset and nvcc is not on PATH). "
                         "Install the CUDA toolkit matching your PyTorch build, or skip this step: models.ops "
                         "falls back to its pure-PyTorch implementation on GPUs.")
    return CUDAExtension(
        name="MultiScaleDeformableAttention",
        sources=[f"{SOURCES}/binding.cpp", f"{SOURCES}/ms_deform_attn_cuda.cu"],
        include_dirs=[SOURCES],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
    )


setup(
    name="MultiScaleDeformableAttention",
    version="1.0",
    description="HCD multi-scale deformable attention CUDA kernels (Deformable DETR interface, no im2col_step)",
    ext_modules=[cuda_extension()],
    cmdclass={"build_ext": BuildExtension},
)
