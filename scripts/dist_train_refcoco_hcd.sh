#!/usr/bin/env bash
# Pretrain HCD on RefCOCO + RefCOCO+ + RefCOCOg pseudo-videos (stage 1 of the two-stage recipe, docs/training.md):
# 8 GPUs x 2 clips, 12 epochs, lr 2e-4 divided by 10 after epochs 8 and 10; then fine-tune on Ref-YouTube-VOS with
#     INIT_FROM=outputs/refcoco_pretrain_hcd/last.pth bash scripts/dist_train_ytvos_hcd.sh
# Usage:
#     bash scripts/dist_train_refcoco_hcd.sh [more main.py flags, e.g. --set data.refcoco_sets=[refcoco]]
# Settings come from configs/refcoco_pretrain_hcd.yaml; flags after the script name override them (main.py --help).
# The learning rate is used as written there whatever the number of processes, and train.batch_size is per process.
# Environment (default):
#   GPUS (8)  processes per node, one GPU each      OUTPUT_DIR (outputs/refcoco_pretrain_hcd)
#   WEIGHTS (weight)  pretrained components          DATA_ROOT (data/coco: train2014/ and the RefCOCO jsons)
#   RESUME  a checkpoint to continue instead of starting a new run (e.g. outputs/refcoco_pretrain_hcd/last.pth)
#   INIT_FROM  start the new run from the model weights of a checkpoint or save_pretrained folder
#   NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500)  several machines (docs/training.md)
#   PYTHON (python)   DRY_RUN=1  print the command and the resolved config, run nothing
# Relative paths are taken from the repository root (the script cds there).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # also when started as "sh script.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/launch_common.sh

launch_training refcoco_pretrain_hcd 8 data/coco "$@"
