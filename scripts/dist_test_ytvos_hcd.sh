#!/usr/bin/env bash
# Ref-YouTube-VOS valid: masks of every expression, the checked submission.zip to upload to the server
# (inference_ytvos.py; the 305 test videos are dropped when meta_expressions/test/meta_expressions.json is there).
#     bash scripts/dist_test_ytvos_hcd.sh [more inference_ytvos.py flags, e.g. --clip_len 36 --amp bf16]
# Environment (default):
#   CHECKPOINT (outputs/ytvos_hcd/last.pth)  a main.py checkpoint or a Predictor.save_pretrained folder
#   OUTPUT_DIR (outputs/ytvos_hcd/valid)     receives Annotations/, submission.zip and config.yaml
#   WEIGHTS (weight)   DATA_ROOT (data/ref-youtube-vos)   DEVICE (cuda)
#   PYTHON (python)    DRY_RUN=1  print the command and the resolved config, run nothing
#   GPUS (1)     GPUS=8: torchrun over 8 processes, each segmenting its share of the videos (balanced by frame
#                count); rank 0 checks them all and writes the zip
# Relative paths are taken from the repository root (the script cds there). Running the same command again
# resumes a torchrun job that stopped (finished videos are kept); --skip_existing does so for one process.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # also when started as "sh script.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/launch_common.sh

launch_inference inference_ytvos.py ytvos_hcd data/ref-youtube-vos "$@"
