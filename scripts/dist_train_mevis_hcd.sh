#!/usr/bin/env bash
# Train HCD on MeViS train with the paper's Ref-YouTube-VOS recipe (configs/mevis_hcd.yaml: 8 GPUs x 2 clips of 5
# frames, 9 epochs, lr 2e-4 divided by 10 after epochs 6 and 8, no clip reversal). Multi-object expressions train on
# the union of their objects' masks, one mask per expression.
#     bash scripts/dist_train_mevis_hcd.sh [more main.py flags, e.g. --set train.num_workers=8]
# Flags after the script name override the config (main.py --help); train.batch_size is per process and the
# learning rate is used as written, whatever GPUS is. Then: bash scripts/dist_test_mevis_hcd.sh
# Environment (default):
#   GPUS (8)  processes per node, one GPU each      OUTPUT_DIR (outputs/mevis_hcd)
#   WEIGHTS (weight)  pretrained components          DATA_ROOT (data/mevis, layout in docs/data.md)
#   RESUME  a checkpoint to continue instead of starting a new run (e.g. outputs/mevis_hcd/last.pth)
#   NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500)  several machines (docs/training.md)
#   PYTHON (python)   DRY_RUN=1  print the command and the resolved config, run nothing
# Relative paths are taken from the repository root (the script cds there).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # also when started as "sh script.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/launch_common.sh

launch_training mevis_hcd 8 data/mevis "$@"
