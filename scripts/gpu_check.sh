#!/usr/bin/env bash
# One GPU check for whoever has a GPU (issue 21 item 6): the CUDA tests, benchmarks/bench_gpu.py,
# benchmarks/bench_train_step.py and the GPU demo, meant to fit 8 minutes on one H100/H200; one JSON summary on
# the last line. Installs nothing. `--help` lists the stages and every flag (scripts/gpu_check.py does the work).
#
#   bash scripts/gpu_check.sh [--dry_run] [--out DIR] [--budget SECONDS]
#
# Environment: PYTHON (default .venv/bin/python when it exists, else python).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
exec "$PYTHON" -m scripts.gpu_check "$@"
