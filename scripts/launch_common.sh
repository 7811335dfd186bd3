# Sourced by scripts/dist_*.sh. Paths are relative to the repository root, where the launchers cd to. Exports
# PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True unless the environment sets it.
#   run CMD...          run CMD; with DRY_RUN=1 print it (shell-quoted, after "+") instead
#   show_config ARGS... with DRY_RUN=1, print the config that ARGS resolve to (scripts/resolve_config.py)
#   finish              with DRY_RUN=1, say that nothing was run
#   launch_training NAME GPUS DATA_ROOT FLAGS...
#                       torchrun main.py on configs/NAME.yaml (or RESUME), output outputs/NAME; the environment's
#                       GPUS, OUTPUT_DIR, WEIGHTS, DATA_ROOT, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT override
#                       the defaults; INIT_FROM (a checkpoint or save_pretrained folder) starts the new run from its
#                       weights (--init_from; not with RESUME); then show_config and finish
#   launch_inference ENTRY NAME DATA_ROOT FLAGS...
#                       $PYTHON ENTRY on outputs/NAME/last.pth, writing outputs/NAME/valid (GPUS > 1: torchrun
#                       over GPUS processes, the videos shared between them); the environment's CHECKPOINT,
#                       WEIGHTS, DATA_ROOT, OUTPUT_DIR, DEVICE override the defaults; then show_config and finish
PYTHON=${PYTHON:-python}
# The CUDA caching allocator maps more memory into a segment as it grows instead of reserving segments of each size
# apart, so the peak reserved memory stays near the peak allocated (docs/gpu.md); a value already set wins.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

run() {
    if [ "${DRY_RUN:-0}" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

show_config() {
    if [ "${DRY_RUN:-0}" = 1 ]; then
        "$PYTHON" -m scripts.resolve_config "$@"
    fi
}

finish() {
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "# DRY_RUN=1: nothing was run"
    fi
}

launch_training() {
    local name=$1 gpus=$2 data_root=$3
    shift 3
    local start args
    if [ -n "${RESUME:-}" ] && [ -n "${INIT_FROM:-}" ]; then
        echo "error: RESUME continues a saved run, INIT_FROM starts a new one from a model's weights: set one" >&2
        return 2
    fi
    if [ -n "${RESUME:-}" ]; then
        start=(--resume "$RESUME")
    else
        start=(--config "configs/$name.yaml")
    fi
    if [ -n "${INIT_FROM:-}" ]; then
        start+=(--init_from "$INIT_FROM")
    fi
    args=("${start[@]}" --output_dir "${OUTPUT_DIR:-outputs/$name}" --weights "${WEIGHTS:-weight}"
          --data_root "${DATA_ROOT:-$data_root}" "$@")
    run torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}" \
        --master_port "${MASTER_PORT:-29500}" --nproc_per_node "${GPUS:-$gpus}" main.py "${args[@]}"
    show_config "${args[@]}"
    finish
}

launch_inference() {
    local entry=$1 name=$2 data_root=$3
    shift 3
    local args=(--checkpoint "${CHECKPOINT:-outputs/$name/last.pth}" --weights "${WEIGHTS:-weight}"
                --data_root "${DATA_ROOT:-$data_root}" --output_dir "${OUTPUT_DIR:-outputs/$name/valid}"
                --device "${DEVICE:-cuda}" "$@")
    run_inference "$entry" "${args[@]}"
    show_config "${args[@]}"
    finish
}

# run_inference ENTRY FLAGS...: $PYTHON ENTRY, or with GPUS > 1 torchrun over GPUS processes on this node, each
# segmenting its share of the videos (inference/sharding.py; rank 0 writes the zip / scores; the same command again
# resumes a job that stopped)
run_inference() {
    local entry=$1
    shift
    if [ "${GPUS:-1}" -gt 1 ]; then
        run "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" "$entry" "$@"
    else
        run "$PYTHON" "$entry" "$@"
    fi
}
