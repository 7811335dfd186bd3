"""One GPU check for whoever has a GPU (issue 21 item 6): the CUDA tests, ``bench_gpu.py``, ``bench_train_step.py``
and the GPU demo in one run meant to fit 8 minutes on one H100/H200, one JSON summary on the last line. Installs
nothing: it runs what the repository holds with the interpreter that runs it.

    bash scripts/gpu_check.sh                 # on a CUDA machine
    bash scripts/gpu_check.sh --dry_run       # the same stages on the CPU with tiny settings

Stages, in order, each a subprocess from the repository root with its own time limit (never more than what is left
of --budget), its output in ``<out>/<stage>.log``:

cuda_tests  pytest on the multi-scale deformable attention tests (``tests/models/test_ms_deform_attn*.py``,
            ``test_msda_backend_choice.py``): on a GPU they run the CUDA extension (built on first use when nvcc is
            there) and the compiled Triton kernels; limit 90 s. Summary: pytest's last line.
bench_gpu   ``python -m benchmarks.bench_gpu --json``: every section (MSDeformAttn backends, FPS eager and compiled
            with FLOPs per frame, K sentences, training-step memory, NCCL). Summary: its JSON.
train_step  ``python -m benchmarks.bench_train_step --device cuda --batch_sizes 1 4 16 32 --json`` (issue 21's
            target: the batch-32 step <= 3 x the batch-4 step). Summary: its JSON.
demo        ``python -m scripts.run_demo --device cuda`` with its default budget, its weights, data and outputs
            under --out. Summary: its ``metrics.json``.

The summary: {"dry_run", "device", "budget_s", "total_s", "stages": {name: {"status": "ok" | "failed" | "timeout"
| "skipped", "seconds", "returncode", "log", "summary"}}, "failed_stages"}. Exit status 1 unless every stage
ended "ok". Every stage runs with the allocator's expandable segments (``PYTORCH_CUDA_ALLOC_CONF``) unless the
environment sets it otherwise, as the launchers do. A stage runs in a session of its own; a timeout, or gpu_check
stopped by Ctrl-C or SIGTERM, kills that session.

--dry_run: the CPU, one cheap test file, ``bench_gpu --dry_run``, ``bench_train_step --dry_run`` and the demo with
budgets of a few steps: the stages' commands and this summary work; its figures say nothing about a GPU.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALLOCATOR_ENV = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE_SEGMENTS = "expandable_segments:True"
MSDA_TESTS = ["tests/models/test_ms_deform_attn.py", "tests/models/test_ms_deform_attn_triton.py",
              "tests/models/test_msda_backend_choice.py"]
# pytest's last line: "7 passed in 4.42s" under pytest.ini's -q, "=== 7 passed in 4.42s ===" without it
PYTEST_SUMMARY = re.compile(r"^=*\s*(\d+ \w+|no tests ran).* in [0-9.]+s\b.*$")


@dataclass(frozen=True)
class Stage:
    """One stage: its command (after the interpreter), its own time limit and how its output is summarised
    (``pytest``: the summary line; ``json``: the last line; ``metrics``: the demo's metrics.json)."""

    name: str
    arguments: list[str]
    limit_s: float
    summary: str


def stages(dry_run: bool, out: Path) -> list[Stage]:
    """The stages of a GPU run, or of the CPU dry run."""
    demo = ["-m", "scripts.run_demo", "--out", str(out / "demo"), "--data_root", str(out / "refshapes"),
            "--weights", str(out / "weights")]
    if dry_run:
        return [Stage("cuda_tests", ["-m", "pytest", "-p", "no:cacheprovider", MSDA_TESTS[2]], 90, "pytest"),
                Stage("bench_gpu", ["-m", "benchmarks.bench_gpu", "--dry_run", "--json", "--repeat", "1", "--videos",
                                    "1", "--rounds", "1"], 300, "json"),
                Stage("train_step", ["-m", "benchmarks.bench_train_step", "--dry_run", "--device", "cpu", "--json"],
                      120, "json"),
                # 10 videos: the tiny VAE's pretraining holds 8 out and needs frames from more
                Stage("demo", [*demo, "--device", "cpu", "--videos", "10", "--valid_videos", "1", "--max_steps", "2",
                               "--vae_steps", "2"], 300, "metrics")]
    return [Stage("cuda_tests", ["-m", "pytest", "-p", "no:cacheprovider", "--durations=5", *MSDA_TESTS], 90,
                  "pytest"),
            Stage("bench_gpu", ["-m", "benchmarks.bench_gpu", "--json"], 300, "json"),
            Stage("train_step", ["-m", "benchmarks.bench_train_step", "--device", "cuda", "--batch_sizes", "1", "4",
                                 "16", "32", "--json"], 60, "json"),
            Stage("demo", [*demo, "--device", "cuda"], 480, "metrics")]


def summarise(stage: Stage, output: str, out: Path):
    """What a finished stage's output says, in the stage's kind of summary; None when it says nothing usable."""
    lines = output.strip().splitlines()
    if stage.summary == "pytest":
        found = [line for line in lines if PYTEST_SUMMARY.match(line.strip())]
        return found[-1].strip("= ") if found else None
    if stage.summary == "json":
        try:
            return json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            return None
    metrics = out / "demo" / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else None


def run_stage(stage: Stage, seconds_left: float, out: Path, environment: dict) -> dict:
    """Run ``stage`` for at most ``min(stage.limit_s, seconds_left)``; its record for the summary."""
    log = out / f"{stage.name}.log"
    limit = min(stage.limit_s, seconds_left)
    if limit <= 0:
        return {"status": "skipped", "seconds": 0.0, "returncode": None, "log": str(log), "summary": None}
    print(f"[gpu_check] {stage.name}: {' '.join(stage.arguments)} (limit {limit:.0f} s)", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, *stage.arguments], cwd=REPO, env=environment, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # a timeout, or gpu_check itself stopped (Ctrl-C, SIGTERM): the stage's session goes with it
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # its own process group: workers and compilers too
                process.wait()
    returncode = process.returncode
    status = "timeout" if timed_out else "ok" if returncode == 0 else "failed"
    output = log.read_text(errors="replace")
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), "returncode": returncode,
            "log": str(log), "summary": summarise(stage, output, out)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", action="store_true",
                        help="the stages on the CPU with tiny settings (checks the commands and the summary)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/hcd_gpu_check"),
                        help="folder for the stages' logs and the demo's weights, data and outputs "
                             "(default /tmp/hcd_gpu_check; an earlier demo there is reused, as run_demo does)")
    parser.add_argument("--budget", type=float, default=480.0, metavar="SECONDS",
                        help="wall seconds for all stages together (default 480: 8 minutes); a stage never runs "
                             "longer than what is left, and one that would start with nothing left is skipped")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error("--budget must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    environment.setdefault(ALLOCATOR_ENV, EXPANDABLE_SEGMENTS)
    if args.dry_run:
        environment["CUDA_VISIBLE_DEVICES"] = ""  # the CPU even on a GPU machine
    start = time.perf_counter()
    records = {}
    for stage in stages(args.dry_run, out):
        records[stage.name] = run_stage(stage, args.budget - (time.perf_counter() - start), out, environment)
        print(f"[gpu_check] {stage.name}: {records[stage.name]['status']} in {records[stage.name]['seconds']} s",
              flush=True)
    failed = [name for name, record in records.items() if record["status"] != "ok"]
    print(json.dumps({"dry_run": args.dry_run, "device": "cpu" if args.dry_run else "cuda", "budget_s": args.budget,
                      "total_s": round(time.perf_counter() - start, 1), "stages": records,
                      "failed_stages": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
