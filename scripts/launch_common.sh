# Sourced by scripts/dist_*.sh. Paths are relative to the repository root, where the launchers cd to.
#   run CMD...          run CMD; with DRY_RUN=1 print it (shell-quoted, after "+") instead
#   show_config ARGS... with DRY_RUN=1, print the config that ARGS resolve to (scripts/resolve_config.py)
#   finish              with DRY_RUN=1, say that nothing was run
PYTHON=${PYTHON:-python}

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
        "$PYTHON" scripts/resolve_config.py "$@"
    fi
}

finish() {
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "# DRY_RUN=1: nothing was run"
    fi
}
