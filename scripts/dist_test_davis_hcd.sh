#!/usr/bin/env bash
# Ref-DAVIS17 valid: palette PNGs of the four annotators (anno_0..anno_3), each scored with the DAVIS-2017
# unsupervised protocol, and their mean J&F, the number papers report (inference_davis.py with --davis_root).
#     bash scripts/dist_test_davis_hcd.sh [more inference_davis.py flags, e.g. --clip_len 24 --amp bf16]
# Environment (default):
#   CHECKPOINT (outputs/davis_hcd/last.pth)  a main.py checkpoint or a Predictor.save_pretrained folder; the
#                                            Ref-YouTube-VOS model (outputs/ytvos_hcd/last.pth) gives the
#                                            zero-shot number the other methods of the paper's table report
#   OUTPUT_DIR (outputs/davis_hcd/valid)     receives anno_0..anno_3/<video>/<frame>.png
#   DATA_ROOT (data/ref-davis)  converted by scripts/convert_davis_to_ytvos.py
#   DAVIS_ROOT (data/DAVIS)     DAVIS-2017 with ImageSets/2017/val.txt and Annotations_unsupervised/480p
#   WEIGHTS (weight)   DEVICE (cuda)   PYTHON (python)   DRY_RUN=1  print the command and the config, run nothing
#   GPUS (1)     GPUS=4: torchrun over 4 processes, each segmenting its share of the videos; rank 0 scores them
# Relative paths are taken from the repository root (the script cds there). To score existing PNGs again:
#     python inference_davis.py --eval_only --davis_root data/DAVIS --results_dir outputs/davis_hcd/valid
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # also when started as "sh script.sh"
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/launch_common.sh

launch_inference inference_davis.py davis_hcd data/ref-davis --davis_root "${DAVIS_ROOT:-data/DAVIS}" "$@"
