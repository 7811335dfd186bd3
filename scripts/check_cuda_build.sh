#!/usr/bin/env bash
# Proves, without a GPU, that the CUDA extension of models/ops compiles, links and imports.
#
#   scripts/check_cuda_build.sh [--jit] [--help]
#
# 1. Finds torch's CUDA version (torch.version.cuda, e.g. 13.0); a CPU-only torch cannot build the extension.
# 2. Uses $CUDA_HOME when it holds bin/nvcc; otherwise installs the matching compiler, runtime headers and CCCL
#    from PyPI (nvidia-cuda-nvcc, -runtime, -cccl, -crt, nvidia-nvvm, all pinned to that CUDA version) with
#    `pip install --target $CUDA_TOOLKIT_DIR` and lays them out as a CUDA_HOME (bin/nvcc, include/, lib64/).
#    Nothing goes into the project's requirements.
# 3. Builds models/ops/setup.py once per architecture in $CUDA_ARCHS (default "8.0 9.0": A100, H100/H200), one
#    at a time, each into its own folder under $BUILD_DIR, and times each build.
# 4. Imports every build in a fresh interpreter and checks that models.ops.kernels.cuda_kernel() accepts it
#    (HCD's interface version, both entry points). No GPU is needed to link and import.
# 5. With --jit, also compiles through models.ops.kernels.compile_cuda_kernel(), the path that a GPU machine
#    without a prior `setup.py install` takes on first use, for the first architecture of $CUDA_ARCHS.
#
# Environment: PYTHON (default .venv/bin/python), CUDA_ARCHS, CUDA_HOME, CUDA_TOOLKIT_DIR (default
# ~/.cache/hcd/cuda-<version>), BUILD_DIR (default a temporary folder, removed at the end), MAX_JOBS (default 1).
# The last line is one JSON object: {"cuda": ..., "nvcc": ..., "build_s": {arch: seconds}, "imports": true, ...}.
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
JIT=0
for arg in "$@"; do
    case "$arg" in
        --jit) JIT=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "check_cuda_build.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
CUDA_ARCHS=${CUDA_ARCHS:-8.0 9.0}
export MAX_JOBS=${MAX_JOBS:-1}

CUDA_VERSION=$("$PYTHON" -c 'import torch; print(torch.version.cuda or "")')
if [ -z "$CUDA_VERSION" ]; then
    echo "check_cuda_build.sh: this torch is a CPU-only build (torch.version.cuda is None); install a CUDA build" \
         "of torch to build the extension." >&2
    exit 1
fi
CUDA_MAJOR=${CUDA_VERSION%%.*}

toolkit_from_pypi() {
    local target=$1
    if [ ! -x "$target/nvidia/cu$CUDA_MAJOR/bin/nvcc" ]; then
        echo "installing the CUDA $CUDA_VERSION compiler and headers from PyPI into $target" >&2
        "$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$target" \
            "nvidia-cuda-nvcc==$CUDA_VERSION.*" "nvidia-cuda-runtime==$CUDA_VERSION.*" \
                    "nvidia-cuda-cccl==$CUDA_VERSION.*" "nvidia-cuda-crt==$CUDA_VERSION.*" "nvidia-nvvm==$CUDA_VERSION.*" >&2
    fi
    local home=$target/nvidia/cu$CUDA_MAJOR
    # torch.utils.cpp_extension links -lcudart from $CUDA_HOME/lib64; the wheel ships lib/libcudart.so.<major>.
    [ -e "$home/lib64" ] || ln -s lib "$home/lib64"
    [ -e "$home/lib/libcudart.so" ] || ln -s "libcudart.so.$CUDA_MAJOR" "$home/lib/libcudart.so"
    echo "$home"
}

if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    echo "using the CUDA toolkit in CUDA_HOME=$CUDA_HOME" >&2
else
    CUDA_HOME=$(toolkit_from_pypi "${CUDA_TOOLKIT_DIR:-$HOME/.cache/hcd/cuda-$CUDA_VERSION}")
fi
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
NVCC_VERSION=$(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
if [ "$NVCC_VERSION" != "$CUDA_VERSION" ]; then
    echo "check_cuda_build.sh: nvcc in $CUDA_HOME is CUDA $NVCC_VERSION but torch was built with CUDA" \
         "$CUDA_VERSION; unset CUDA_HOME to get the matching compiler from PyPI." >&2
    exit 1
fi

if [ -z "${BUILD_DIR:-}" ]; then
    BUILD_DIR=$(mktemp -d)
    trap 'rm -rf "$BUILD_DIR"' EXIT
fi

check_import() {  # $1: folder holding the built module on sys.path
    PYTHONPATH="$1:$REPO" "$PYTHON" - <<'EOF'
import torch  # first: the extension links against libtorch's libraries
import MultiScaleDeformableAttention as module
from models.ops import kernels
assert kernels.cuda_kernel() is module, "models.ops.kernels.cuda_kernel() rejected the build"
for name in ("ms_deform_attn_forward", "ms_deform_attn_backward"):
    assert callable(getattr(module, name)), name
print(f"imported {module.__file__}")
EOF
}

BUILD_TIMES=""
for arch in $CUDA_ARCHS; do
    out="$BUILD_DIR/sm_${arch/./}"
    echo "building models/ops for sm_${arch/./} (TORCH_CUDA_ARCH_LIST=$arch, MAX_JOBS=$MAX_JOBS)" >&2
    start=$(date +%s)
    (cd models/ops && TORCH_CUDA_ARCH_LIST=$arch "$PYTHON" setup.py --quiet build_ext \
        --build-lib "$out/lib" --build-temp "$out/temp") > "$out.log" 2>&1 || { cat "$out.log" >&2; exit 1; }
    seconds=$(( $(date +%s) - start ))
    grep -q -- "code=sm_${arch/./}" "$out.log" \
        || { echo "check_cuda_build.sh: the build log has no code=sm_${arch/./}" >&2; cat "$out.log" >&2; exit 1; }
    grep -i "warning" "$out.log" >&2 || true
    check_import "$out/lib" >&2
    echo "sm_${arch/./}: built and imported in ${seconds} s" >&2
    BUILD_TIMES="$BUILD_TIMES\"${arch}\": $seconds, "
done

JIT_SECONDS=null
if [ "$JIT" = 1 ]; then
    arch=${CUDA_ARCHS%% *}
    echo "compiling through models.ops.kernels.compile_cuda_kernel() for sm_${arch/./}" >&2
    start=$(date +%s)
    TORCH_CUDA_ARCH_LIST=$arch TORCH_EXTENSIONS_DIR="$BUILD_DIR/jit" PYTHONPATH="$REPO" "$PYTHON" - >&2 <<'EOF'
from models.ops import kernels
assert kernels.compile_cuda_kernel() is not None, "the first-use CUDA build failed (see the warning above)"
print("first-use build imported")
EOF
    JIT_SECONDS=$(( $(date +%s) - start ))
fi

echo "{\"cuda\": \"$CUDA_VERSION\", \"nvcc\": \"$NVCC_VERSION\", \"cuda_home\": \"$CUDA_HOME\"," \
     "\"build_s\": {${BUILD_TIMES%, }}, \"jit_build_s\": $JIT_SECONDS, \"imports\": true}"
