#!/usr/bin/env bash
# Train HCD on Ref-YouTube-VOS as the paper does: 8 GPUs x 2 clips of 5 frames, 9 epochs, lr 2e-4 divided by 10
# after epochs 6 and 8.
#     bash scripts/dist_train_ytvos_hcd.sh [more main.py flags, e.g. --set train.num_workers=8]
# Settings come from configs/ytvos_hcd.yaml; flags after the script name override them (main.py --help). The learning
# rate is used as written there whatever the number of processes, and train.batch_size is per process: with
# another GPUS the global batch changes, so scale --lr yourself if you want the paper's ratio.
# Environment (default):
#   GPUS (8)  processes per node, one GPU each      OUTPUT_DIR (outputs/ytvos_hcd)
#   WEIGHTS (weight)  pretrained components          DATA_ROOT (data/ref-youtube-vos)
#   RESUME  a checkpoint to continue instead of starting a new run (e.g. outputs/ytvos_hcd/last.pth)
#   INIT_FROM  start the new run from the model weights of a checkpoint or save_pretrained folder, e.g. the RefCOCO
#              pretraining (outputs/refcoco_pretrain_hcd/last.pth); fresh optimizer and schedule (main.py --init_from)
#   NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500)  several machines (docs/training.md)
#   PYTHON (python)   DRY_RUN=1  print the command and the resolved config, run nothing
# Relative paths are taken from the repository root (the script cds there).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # also when started as "sh script.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/launch_common.sh

launch_training ytvos_hcd 8 data/ref-youtube-vos "$@"
