#!/usr/bin/env bash
# A2D-Sentences test and JHMDB-Sentences with the A2D model (main.py --eval): mAP@[.5:.95] over all query slots
# (the published convention) and of the top slot, overall / mean IoU, P@0.5..0.9. Each evaluation prints a table
# and writes <OUTPUT_DIR>/eval_a2d.json and eval_jhmdb.json.
#     bash scripts/dist_test_a2d_hcd.sh [more main.py flags, e.g. --amp bf16]
# Environment (default):
#   CHECKPOINT (outputs/a2d_hcd/last.pth)   OUTPUT_DIR (outputs/a2d_hcd/eval)
#   GPUS (1)  processes, each evaluating a shard     WEIGHTS (weight)
#   DATA_ROOT (data/a2d_sentences)   JHMDB_ROOT (data/jhmdb_sentences; skipped when the folder is absent)
#   PYTHON (python)   DRY_RUN=1  print the commands and the resolved configs, run nothing
# Relative paths are taken from the repository root (the script cds there).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # also when started as "sh script.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/launch_common.sh

CHECKPOINT=${CHECKPOINT:-outputs/a2d_hcd/last.pth}
JHMDB_ROOT=${JHMDB_ROOT:-data/jhmdb_sentences}
COMMON=(--eval --resume "$CHECKPOINT" --weights "${WEIGHTS:-weight}" --output_dir "${OUTPUT_DIR:-outputs/a2d_hcd/eval}")
A2D=("${COMMON[@]}" --data_root "${DATA_ROOT:-data/a2d_sentences}" "$@")
JHMDB=("${COMMON[@]}" --data_root "$JHMDB_ROOT" --set dataset=jhmdb "$@")

run torchrun --nproc_per_node "${GPUS:-1}" main.py "${A2D[@]}"
if [ -d "$JHMDB_ROOT" ] || [ "${DRY_RUN:-0}" = 1 ]; then
    run torchrun --nproc_per_node "${GPUS:-1}" main.py "${JHMDB[@]}"
else
    echo "skipping JHMDB-Sentences: $JHMDB_ROOT not found (set JHMDB_ROOT)"
fi
show_config "${A2D[@]}"
show_config "${JHMDB[@]}"
finish
