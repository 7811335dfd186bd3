"""scripts/gpu_check.sh (scripts/gpu_check.py): its stages' commands fit the scripts they call, the budget and the
time limits hold, a stopped check leaves no stage running, and the summary on the last line has every key; the whole
dry run on the CPU is a slow test."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import bench_gpu, bench_train_step
from scripts import gpu_check

REPO = Path(__file__).resolve().parents[1]
RECORD_KEYS = {"status", "seconds", "returncode", "log", "summary"}


class Clock:
    """Stands in for gpu_check's ``time`` module: the stages' seconds are what the test says they are."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def python_stage(name: str, code: str, limit_s: float, summary: str) -> gpu_check.Stage:
    return gpu_check.Stage(name, ["-c", code], limit_s, summary)


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_statuses_summaries_and_the_budget(tmp_path, monkeypatch, capsys):
    stand_ins = [
        python_stage("cuda_tests", "print('..'); print('=== 3 passed, 2 skipped in 4.20s ===')", 30, "pytest"),
        python_stage("bench_gpu", "import json; print('table'); print(json.dumps({'fps': 12.5}))", 30, "json"),
        python_stage("train_step", "import sys; print('{\"half\": '); sys.exit(3)", 30, "json"),
        python_stage("demo", "import time; time.sleep(60)", 1.5, "metrics"),
        python_stage("after", "print('never')", 30, "json"),
    ]
    monkeypatch.setattr(gpu_check, "stages", lambda dry_run, out: stand_ins)
    clock = Clock()
    monkeypatch.setattr(gpu_check, "time", clock)
    real_run_stage = gpu_check.run_stage
    seconds = {"cuda_tests": 1, "bench_gpu": 2, "train_step": 1, "demo": 5}  # the demo uses up the 9 s budget

    def run_stage(stage, seconds_left, out, environment):
        record = real_run_stage(stage, seconds_left, out, environment)
        clock.now += seconds.get(stage.name, 0)
        return record

    monkeypatch.setattr(gpu_check, "run_stage", run_stage)
    assert gpu_check.main(["--out", str(tmp_path), "--budget", "9"]) == 1
    summary = last_json(capsys.readouterr().out)
    assert set(summary) == {"dry_run", "device", "budget_s", "total_s", "stages", "failed_stages"}
    stages = summary["stages"]
    assert list(stages) == ["cuda_tests", "bench_gpu", "train_step", "demo", "after"]
    assert all(set(record) == RECORD_KEYS for record in stages.values())
    assert stages["cuda_tests"]["status"] == "ok" and stages["cuda_tests"]["summary"] == "3 passed, 2 skipped in 4.20s"
    assert stages["bench_gpu"]["summary"] == {"fps": 12.5}
    assert stages["train_step"]["status"] == "failed" and stages["train_step"]["returncode"] == 3
    assert stages["train_step"]["summary"] is None  # a broken last line is no summary
    assert stages["demo"]["status"] == "timeout" and stages["demo"]["summary"] is None  # stopped at its 1.5 s
    assert stages["after"]["status"] == "skipped"  # 9 s of the 9 s budget gone
    assert summary["failed_stages"] == ["train_step", "demo", "after"]
    assert "3 passed" in (tmp_path / "cuda_tests.log").read_text()


def test_the_pytest_summary_is_found_with_and_without_pytest_ini_quiet_flag(tmp_path):
    stage = python_stage("cuda_tests", "", 1, "pytest")
    quiet = (".......  [100%]\n4.11s call  tests/models/test_msda_backend_choice.py::t\n"  # as pytest.ini's -q prints
             "7 passed, 1 skipped in 4.42s\n")
    assert gpu_check.summarise(stage, quiet, tmp_path) == "7 passed, 1 skipped in 4.42s"
    assert gpu_check.summarise(stage, "== 1 failed, 6 passed in 9.10s (0:00:09) ==\n", tmp_path) == \
        "1 failed, 6 passed in 9.10s (0:00:09)"
    assert gpu_check.summarise(stage, "collecting ...\nKeyboardInterrupt\n", tmp_path) is None


def test_a_stopped_check_kills_the_running_stage(tmp_path, monkeypatch):
    """gpu_check interrupted (here: Ctrl-C as KeyboardInterrupt a second into the stage) leaves no stage running:
    the stage has a session of its own, which the terminal's Ctrl-C would not reach."""
    pid_file = tmp_path / "stage.pid"
    stage = python_stage("bench_gpu", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                                      "time.sleep(60)", 30, "json")
    real_popen = subprocess.Popen

    class InterruptedWait(real_popen):
        def wait(self, timeout=None):
            if timeout is None:
                return super().wait()
            while not pid_file.is_file():
                time.sleep(0.05)
            raise KeyboardInterrupt

    monkeypatch.setattr(gpu_check.subprocess, "Popen", InterruptedWait)
    with pytest.raises(KeyboardInterrupt):
        gpu_check.run_stage(stage, 30, tmp_path, dict(os.environ))
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(int(pid_file.read_text()), 0)


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_benchmark_stages_pass_flags_their_scripts_accept(dry_run, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # bench_train_step refuses cuda without a GPU
    plan = {stage.name: stage for stage in gpu_check.stages(dry_run, tmp_path)}
    assert list(plan) == ["cuda_tests", "bench_gpu", "train_step", "demo"]
    assert plan["cuda_tests"].limit_s <= 90  # issue 21: the CUDA tests finish in < 90 s
    parsed = {}
    for name, script in (("bench_gpu", bench_gpu), ("train_step", bench_train_step)):
        arguments = plan[name].arguments
        assert arguments[:2] == ["-m", f"benchmarks.{script.__name__.rsplit('.', 1)[1]}"] and "--json" in arguments
        parsed[name] = script.parse_args(arguments[2:])
        assert parsed[name].dry_run == dry_run
    if not dry_run:  # the batch-32 step against the batch-4 step (issue 21's target)
        assert {4, 32} <= set(parsed["train_step"].batch_sizes)
    assert ("--device", "cpu" if dry_run else "cuda") in zip(plan["demo"].arguments, plan["demo"].arguments[1:])
    assert all(Path(path).is_file() for path in gpu_check.MSDA_TESTS)


@pytest.mark.slow
def test_dry_run_runs_every_stage_on_the_cpu(tmp_path):
    """The real script, every stage with its dry-run settings (about two minutes on two cores)."""
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry_run", "--out", str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    summary = last_json(result.stdout)
    assert result.returncode == 0, summary
    assert summary["dry_run"] and summary["failed_stages"] == []
    stages = summary["stages"]
    assert "passed" in stages["cuda_tests"]["summary"]
    assert stages["bench_gpu"]["summary"]["failed_sections"] == []
    assert set(stages["bench_gpu"]["summary"]["sections"]) == set(bench_gpu.SECTIONS)
    assert stages["train_step"]["summary"]["dry_run"]
    assert 0 <= stages["demo"]["summary"]["JF"] <= 1
