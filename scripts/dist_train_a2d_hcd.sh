#!/usr/bin/env bash
# Train HCD on A2D-Sentences as the paper does: 4 GPUs x 1 clip, 6 epochs, lr 1e-4 divided by 10 after
# epochs 3 and 5.
#     bash scripts/dist_train_a2d_hcd.sh [more main.py flags, e.g. --set train.num_workers=8]
# Settings come from configs/a2d_hcd.yaml; flags after the script name override them (main.py --help). The learning
# rate is used as written there whatever the number of processes, and train.batch_size is per process: with
# another GPUS the global batch changes, so scale --lr yourself if you want the paper's ratio.
# Environment (default):
#   GPUS (4)  processes per node, one GPU each      OUTPUT_DIR (outputs/a2d_hcd)
#   WEIGHTS (weight)  pretrained components          DATA_ROOT (data/a2d_sentences)
#   RESUME  a checkpoint to continue instead of starting a new run (e.g. outputs/a2d_hcd/last.pth)
#   NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500)  several machines (docs/training.md)
#   PYTHON (python)   DRY_RUN=1  print the command and the resolved config, run nothing
# Relative paths are taken from the repository root (the script cds there).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # also when started as "sh script.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/launch_common.sh

if [ -n "${RESUME:-}" ]; then
    START=(--resume "$RESUME")
else
    START=(--config configs/a2d_hcd.yaml)
fi
ARGS=("${START[@]}" --output_dir "${OUTPUT_DIR:-outputs/a2d_hcd}" --weights "${WEIGHTS:-weight}"
      --data_root "${DATA_ROOT:-data/a2d_sentences}" "$@")

run torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}" \
    --master_port "${MASTER_PORT:-29500}" --nproc_per_node "${GPUS:-4}" main.py "${ARGS[@]}"
show_config "${ARGS[@]}"
finish
