#!/usr/bin/env bash
# MeViS inference (inference_mevis.py): SPLIT=valid (default) writes <video>/<exp_id>/<frame>.png and the checked
# submission.zip, video folders at its root, for the MeViS server; SPLIT=valid_u writes the masks and scores them
# locally as the official tools/eval_mevis.py does (last line: the JSON of J, F, JF, version, per expression).
#     bash scripts/dist_test_mevis_hcd.sh [more inference_mevis.py flags, e.g. --clip_len 24 --amp bf16]
# Environment (default):
#   SPLIT (valid)  valid or valid_u
#   CHECKPOINT (outputs/mevis_hcd/last.pth)  a main.py checkpoint or a Predictor.save_pretrained folder
#   OUTPUT_DIR (outputs/mevis_hcd/<SPLIT>)   receives the video folders, config.yaml and (valid) submission.zip
#   WEIGHTS (weight)   DATA_ROOT (data/mevis)   DEVICE (cuda)
#   PYTHON (python)    DRY_RUN=1  print the commands and the resolved config, run nothing
#   GPUS (1)       GPUS=4: torchrun over 4 processes, each segmenting its share of the videos (rank 0 writes the
#                  zip); the same command again resumes a job that stopped
# Relative paths are taken from the repository root (the script cds there). Results of MeViS v1 and v2 are not
# comparable: both commands print which release the json is.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # also when started as "sh script.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/launch_common.sh

SPLIT=${SPLIT:-valid}
DATA_ROOT=${DATA_ROOT:-data/mevis}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/mevis_hcd/$SPLIT}
ARGS=(--checkpoint "${CHECKPOINT:-outputs/mevis_hcd/last.pth}" --weights "${WEIGHTS:-weight}" --data_root "$DATA_ROOT"
      --split "$SPLIT" --output_dir "$OUTPUT_DIR" --device "${DEVICE:-cuda}" "$@")

run_inference inference_mevis.py "${ARGS[@]}"
if [ "$SPLIT" = valid_u ]; then
    run "$PYTHON" inference_mevis.py --score --pred_dir "$OUTPUT_DIR" --gt_root "$DATA_ROOT" --split valid_u
fi
show_config "${ARGS[@]}"
finish
