"""Crash-safe training on the stand-ins: ``kill -9`` at random moments and SIGTERM/SIGINT, to main.py alone or to
its whole process group with data-loader workers (as Slurm, ``timeout`` and ``kill -- -PGID`` send it), then
``--resume``, end with the same weights, optimizer, scheduler and log as a run that was never interrupted."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import main
from tests import train_standins
from util.checkpoint import load_checkpoint
from util.train_log import TrainLog

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 36
STEP_SLEEP = 0.05  # seconds per step in the killed runs: ~2 s of training to hit
# 4 steps an epoch, so the runs cross epoch ends, an lr drop and mid-epoch checkpoints.
CONFIG = train_standins.tiny_config(seed=5, epochs=9, lr_drop=[5], checkpoint_every=3)


@pytest.fixture(autouse=True)
def standins(monkeypatch):
    train_standins.install(monkeypatch)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The output folder of an uninterrupted run to MAX_STEPS (in-process)."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        train_standins.install(patch)
        assert main.main(["--config", str(write_config(root / "c.yaml")), "--output_dir", str(root / "out"),
                          "--max_steps", str(MAX_STEPS)]) == 0
    return root / "out"


def write_config(path: Path) -> Path:
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def start(args: list[str]) -> subprocess.Popen:
    """main.py on the stand-ins in a new process, each step slowed down by STEP_SLEEP; the process leads a process
    group of its own (its data-loader workers join it), as a batch job's does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT_STEP_SLEEP": str(STEP_SLEEP),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "tests.fault_standins", *args, "--max_steps", str(MAX_STEPS)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_new_checkpoint(process: subprocess.Popen, last: Path, previous_mtime: int | None) -> None:
    deadline = time.monotonic() + 60
    while not (last.is_file() and last.stat().st_mtime_ns != previous_mtime):
        if process.poll() is not None:
            raise AssertionError(f"the run ended before writing a checkpoint:\n{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("no checkpoint within 60 s")
        time.sleep(0.01)


def log_records(output_dir: Path) -> list[dict]:
    """The log without its wall-clock field."""
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if key != "time"} for record in records]


def assert_same_run(reference: Path, resumed: Path) -> None:
    a, b = load_checkpoint(reference / "last.pth"), load_checkpoint(resumed / "last.pth")
    assert (a["epoch"], a["step"], a["data_position"]) == (b["epoch"], b["step"], b["data_position"])
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    assert a["scheduler"] == b["scheduler"]
    for rng_a, rng_b in zip(a["rng"], b["rng"], strict=True):
        assert torch.equal(rng_a["torch"], rng_b["torch"]) and rng_a["python"] == rng_b["python"]
    # Every step's losses (the data order and dropout draws) and no step logged twice.
    assert log_records(resumed) == log_records(reference)


def test_three_kill_9_at_random_moments_then_resume_is_bitwise_identical(reference, tmp_path):
    out = tmp_path / "out"
    delays = random.Random(2024).sample([0.0, 0.05, 0.1, 0.15, 0.2, 0.25], 3)
    args = ["--config", str(write_config(tmp_path / "c.yaml")), "--output_dir", str(out)]
    killed_at, mtime = [], None
    for delay in delays:
        process = start(args)
        wait_for_new_checkpoint(process, out / "last.pth", mtime)
        time.sleep(delay)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        process.stdout.close()
        process.stderr.close()
        mtime = (out / "last.pth").stat().st_mtime_ns
        killed_at.append(load_checkpoint(out / "last.pth")["step"])
        args = ["--resume", str(out / "last.pth"), "--output_dir", str(out)]
    assert killed_at == sorted(set(killed_at)) and killed_at[-1] < MAX_STEPS  # three distinct points, all mid-run
    assert main.main(args + ["--max_steps", str(MAX_STEPS)]) == 0
    assert_same_run(reference, out)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_checkpoints_at_the_step_boundary_and_resume_is_identical(reference, tmp_path, signum):
    out = tmp_path / "out"
    process = start(["--config", str(write_config(tmp_path / "c.yaml")), "--output_dir", str(out)])
    wait_for_new_checkpoint(process, out / "last.pth", None)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    assert f"stopped by {signal.Signals(signum).name} after step" in stdout and "--resume" in stdout
    saved = load_checkpoint(out / "last.pth")
    # The checkpoint holds the last step trained: nothing done before the stop is lost.
    assert saved["step"] == max(record["step"] for record in log_records(out))
    assert 3 <= saved["step"] < MAX_STEPS
    assert (out / "last.pth").read_bytes() in [path.read_bytes() for path in out.glob("checkpoint_*.pth")]
    assert main.main(["--resume", str(out / "last.pth"), "--max_steps", str(MAX_STEPS)]) == 0
    assert_same_run(reference, out)


def test_sigterm_to_the_process_group_with_workers_stops_cleanly_and_resume_is_identical(reference, tmp_path):
    """The group's SIGTERM reaches the two data-loader workers too (torch's own worker handler would kill them and
    crash the step), and comes twice, as under Slurm + torchrun: the run still finishes its step, checkpoints and
    exits 143."""
    out = tmp_path / "out"
    process = start(["--config", str(write_config(tmp_path / "c.yaml")), "--output_dir", str(out),
                     "--num_workers", "2"])
    wait_for_new_checkpoint(process, out / "last.pth", None)
    os.killpg(process.pid, signal.SIGTERM)
    os.killpg(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "stopped by SIGTERM after step" in stdout
    saved = load_checkpoint(out / "last.pth")
    assert saved["step"] == max(record["step"] for record in log_records(out)) and saved["step"] < MAX_STEPS
    assert main.main(["--resume", str(out / "last.pth"), "--num_workers", "0", "--max_steps", str(MAX_STEPS)]) == 0
    assert_same_run(reference, out)


def test_sigkill_after_the_group_sigterm_leaves_a_complete_checkpoint_to_resume_exactly(reference, tmp_path):
    """Slurm's second act: SIGKILL to every process of the job shortly after the SIGTERM, here while the run is
    finishing its step or writing the stop checkpoint. ``last.pth`` is then the newest complete checkpoint."""
    out = tmp_path / "out"
    process = start(["--config", str(write_config(tmp_path / "c.yaml")), "--output_dir", str(out),
                     "--num_workers", "2"])
    wait_for_new_checkpoint(process, out / "last.pth", None)
    os.killpg(process.pid, signal.SIGTERM)
    time.sleep(STEP_SLEEP / 2)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode in (-signal.SIGKILL, 143)  # 143: the stop was complete before the SIGKILL
    assert 3 <= load_checkpoint(out / "last.pth")["step"] < MAX_STEPS
    assert main.main(["--resume", str(out / "last.pth"), "--num_workers", "0", "--max_steps", str(MAX_STEPS)]) == 0
    assert_same_run(reference, out)


def test_resumed_log_drops_records_after_the_checkpoint_and_a_cut_line(tmp_path):
    lines = [json.dumps({"epoch": 0, "step": step, "loss": float(step)}) for step in (1, 2, 3)]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + '\n{"epoch": 0, "st')
    log = TrainLog(tmp_path, resumed_step=2)
    log.write({"epoch": 0, "step": 3, "loss": 9.0})
    log.close()
    steps_losses = [(r["step"], r["loss"]) for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())]
    assert steps_losses == [(1, 1.0), (2, 2.0), (3, 9.0)]
