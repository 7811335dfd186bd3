"""Training speed on a CPU shared with another busy process: the thread governor against a fixed thread pool.

Runs short tiny-model training runs (``configs/refshapes_tiny.yaml``: 2 clips x 4 frames of 128x128, tiny weights
and a small RefShapes built in a temporary folder) in four conditions: alone or beside one competing busy-loop
process (``--competitor_nice`` sets its nice value), each with ``util.cpu_threads.ThreadGovernor`` as training
uses it and with the governor replaced by a no-op (the thread pool stays as wide as the machine). The seconds
per step are the median over the logged windows after the first (which holds the warm-up). The slowdown of a
condition is its step time over that of the same mode alone, measured in the same run.

    python -m benchmarks.bench_contention --json     # last line: {"governor": {...}, "fixed": {...}, ...}
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
# main.py with the governor replaced by one that never changes the thread count.
FIXED_THREADS = ("import sys; import engine\n"
                 "class Fixed:\n    def update(self):\n        return None\n"
                 "engine.ThreadGovernor = Fixed\nimport main; sys.exit(main.main(sys.argv[1:]))\n")


def seconds_per_step(log: Path) -> float:
    """Median seconds per step over the windows of ``log.jsonl`` after the first."""
    times = [json.loads(line)["time"] for line in log.read_text().splitlines()]
    return statistics.median(times[1:])


def train(mode: str, weights: Path, data: Path, out: Path, steps: int) -> Path:
    """Train ``steps`` steps in a subprocess with the governor (``mode`` "governor") or without ("fixed");
    returns the run's ``log.jsonl``."""
    args = ["--config", "configs/refshapes_tiny.yaml", "--data_root", str(data), "--weights", str(weights),
            "--output_dir", str(out), "--max_steps", str(steps), "--device", "cpu",
            "--set", "train.log_every=5", "--set", f"train.checkpoint_every={steps + 1}"]
    launcher = [sys.executable, "main.py"] if mode == "governor" else [sys.executable, "-c", FIXED_THREADS]
    subprocess.run(launcher + args, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out / "log.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="training steps per condition (windows of 5)")
    parser.add_argument("--competitor_nice", type=int, default=0, help="nice value of the competing busy loop")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    args = parser.parse_args()
    from datasets.refshapes import generate_refshapes
    from testing.tiny_weights import build_tiny_weights

    results: dict[str, dict[str, float]] = {"governor": {}, "fixed": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_tiny_weights(tmp / "weights")
        generate_refshapes(tmp / "data", num_videos=4, num_valid_videos=0, num_frames=8, size=128)
        train("governor", tmp / "weights", tmp / "data", tmp / "warmup", 6)  # compiles the C++ kernel once
        for load in ("alone", "one_competitor"):
            for mode in results:
                competitor = None
                if load == "one_competitor":
                    code = BUSY_LOOP.format(seconds=3600)
                    competitor = subprocess.Popen(["nice", "-n", str(args.competitor_nice), sys.executable, "-c", code])
                    time.sleep(0.5)
                try:
                    log = train(mode, tmp / "weights", tmp / "data", tmp / f"{mode}_{load}", args.steps)
                    results[mode][load] = seconds_per_step(log)
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
    summary = {mode: {**times, "slowdown": times["one_competitor"] / times["alone"]} for mode, times in results.items()}
    summary["competitor_nice"] = args.competitor_nice
    for mode in ("governor", "fixed"):
        row = summary[mode]
        print(f"{mode:<9} alone {row['alone']:.3f} s/step   one competitor {row['one_competitor']:.3f} s/step   "
              f"slowdown {row['slowdown']:.2f}x")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
