"""Training speed on a CPU shared with another busy process: the default thread count, chosen when the run starts
and then fixed, against ``--adaptive_threads``.

Runs short tiny-model training runs (``configs/refshapes_tiny.yaml``: 2 clips x 4 frames of 128x128, tiny weights
and a small RefShapes built in a temporary folder) in two modes, ``fixed`` (main.py's default: the cores free when
the run starts, kept to its end, ``util/cpu_threads.py``) and ``adaptive`` (``--adaptive_threads``: the governor
follows the load all along), each under three loads: alone, beside a busy-loop process that runs before the run
starts (``one_competitor``) and beside one that starts once the run has logged its first window
(``competitor_joins``); ``--competitor_nice`` sets the busy loop's nice value. The seconds per step are the
median over the logged windows after the first (which holds the warm-up). A slowdown is a load's step time over
that of the same mode alone, measured in the same run.

    python -m benchmarks.bench_contention --json   # last line: {"fixed": {..., "slowdown", "slowdown_joins"}, ...}
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUSY_LOOP = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
MODE_FLAGS = {"fixed": [], "adaptive": ["--adaptive_threads"]}


def seconds_per_step(log: Path) -> float:
    """Median seconds per step over the windows of ``log.jsonl`` after the first."""
    times = [json.loads(line)["time"] for line in log.read_text().splitlines()]
    return statistics.median(times[1:])


def train(mode: str, weights: Path, data: Path, out: Path, steps: int, when_warm=None) -> Path:
    """Train ``steps`` steps in a subprocess, ``mode`` "fixed" (main.py's default) or "adaptive"
    (``--adaptive_threads``), calling ``when_warm()`` once the first window is logged; returns the run's
    ``log.jsonl``."""
    args = ["--config", "configs/refshapes_tiny.yaml", "--data_root", str(data), "--weights", str(weights),
            "--output_dir", str(out), "--max_steps", str(steps), "--device", "cpu",
            "--set", "train.log_every=5", "--set", f"train.checkpoint_every={steps + 1}", *MODE_FLAGS[mode]]
    run = subprocess.Popen([sys.executable, "main.py", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    log = out / "log.jsonl"
    if when_warm is not None:
        while run.poll() is None and not (log.is_file() and log.read_text().strip()):
            time.sleep(0.05)
        when_warm()
    if run.wait() != 0:
        raise subprocess.CalledProcessError(run.returncode, run.args)
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="training steps per condition (windows of 5)")
    parser.add_argument("--competitor_nice", type=int, default=0, help="nice value of the competing busy loop")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    args = parser.parse_args()
    from datasets.refshapes import generate_refshapes
    from testing.tiny_weights import build_tiny_weights

    competitors: list[subprocess.Popen] = []

    def start_competitor() -> None:
        code = BUSY_LOOP.format(seconds=3600)
        competitors.append(subprocess.Popen(["nice", "-n", str(args.competitor_nice), sys.executable, "-c", code]))

    results: dict[str, dict[str, float]] = {mode: {} for mode in MODE_FLAGS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_tiny_weights(tmp / "weights")
        generate_refshapes(tmp / "data", num_videos=4, num_valid_videos=0, num_frames=8, size=128)
        train("fixed", tmp / "weights", tmp / "data", tmp / "warmup", 6)  # compiles the C++ kernel once
        for load in ("alone", "one_competitor", "competitor_joins"):
            for mode in results:
                if load == "one_competitor":
                    start_competitor()
                    time.sleep(0.5)
                try:
                    log = train(mode, tmp / "weights", tmp / "data", tmp / f"{mode}_{load}", args.steps,
                                start_competitor if load == "competitor_joins" else None)
                    results[mode][load] = seconds_per_step(log)
                finally:
                    for competitor in competitors:
                        competitor.kill()
                        competitor.wait()
                    competitors.clear()
    summary = {mode: {**times, "slowdown": times["one_competitor"] / times["alone"],
                      "slowdown_joins": times["competitor_joins"] / times["alone"]} for mode, times in results.items()}
    summary["competitor_nice"] = args.competitor_nice
    for mode in MODE_FLAGS:
        row = summary[mode]
        print(f"{mode:<9} alone {row['alone']:.3f} s/step   one competitor {row['one_competitor']:.3f} s/step "
              f"({row['slowdown']:.2f}x)   competitor joining {row['competitor_joins']:.3f} s/step "
              f"({row['slowdown_joins']:.2f}x)")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
