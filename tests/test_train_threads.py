"""main.py's CPU thread count (util/cpu_threads.py): fixed for the run, recorded in its checkpoints and reused by
``--resume``, so that ``kill -9`` + ``--resume`` of the real tiny HCD ends bit-identical to the uninterrupted run
with default settings; ``--adaptive_threads``, the opt-in governor."""
import json
import os
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

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


def hcd_args(weights: Path, data: Path, out: Path) -> list[str]:
    """The tiny HCD on RefShapes, cheap: 32-px clips, a checkpoint every 2 steps, STEPS steps."""
    return ["--config", str(REPO / "configs" / "refshapes_tiny.yaml"), "--weights", str(weights), "--data_root",
            str(data), "--output_dir", str(out), "--device", "cpu", "--max_steps", str(STEPS),
            "--set", "data.train_scales=[32]", "--set", "data.max_size=32", "--set", "train.checkpoint_every=2",
            "--set", "train.log_every=1"]


def losses(out: Path) -> list[dict]:
    return [{key: value for key, value in json.loads(line).items() if key != "time"}
            for line in (out / "log.jsonl").read_text().splitlines()]


def test_kill_9_and_resume_of_the_real_hcd_is_bit_identical_with_default_settings(tiny_weights, refshapes_root,
                                                                                   tmp_path, capsys):
    """The killed run starts with one thread (OMP_NUM_THREADS=1, as under torchrun; one thread also keeps the test
    fast on a busy machine) and records it; the resume runs in a process of two threads and must take the recorded
    one (at 1 and 2 threads the weights differ by ~1e-4 after these steps). The uninterrupted reference is given
    the killed run's count."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    killed = tmp_path / "killed"
    run = subprocess.Popen([sys.executable, "main.py", *hcd_args(tiny_weights, refshapes_root, killed)], cwd=REPO,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (killed / "last.pth").is_file():  # the copy of checkpoint_step0000002.pth, written after it
        assert run.poll() is None, run.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    stopped = load_checkpoint(killed / "last.pth")
    assert stopped["step"] < STEPS  # killed mid-run
    threads = stopped["cpu_threads"]
    assert threads == 1

    whole = tmp_path / "whole"
    assert main.main(hcd_args(tiny_weights, refshapes_root, whole) + ["--set", f"train.cpu_threads={threads}"]) == 0
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the resuming process starts with another count
    try:
        assert main.main(["--resume", str(killed / "last.pth")]) == 0
    finally:
        torch.set_num_threads(before)
    assert f"CPU threads: {threads}, fixed for the whole run (recorded with the resumed run)" in capsys.readouterr().out

    a, b = load_checkpoint(whole / "last.pth"), load_checkpoint(killed / "last.pth")
    assert a["step"] == b["step"] == STEPS and a["cpu_threads"] == b["cpu_threads"] == threads
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert losses(killed) == losses(whole)


@pytest.fixture
def standins(monkeypatch):
    train_standins.install(monkeypatch)


def standin_config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(train_standins.tiny_config(seed=3, epochs=3, lr_drop=[5], checkpoint_every=2)))
    return path


def test_a_configured_thread_count_on_resume_is_used_and_warned_about(standins, tmp_path):
    before = torch.get_num_threads()
    out = tmp_path / "out"
    assert main.main(["--config", str(standin_config(tmp_path)), "--output_dir", str(out), "--max_steps", "2",
                      "--set", "train.cpu_threads=1"]) == 0
    assert load_checkpoint(out / "last.pth")["cpu_threads"] == 1 and torch.get_num_threads() == before
    with pytest.warns(UserWarning, match="trained with 1 CPU thread.*uses 2.*does not continue bit for bit"):
        assert main.main(["--resume", str(out / "last.pth"), "--max_steps", "4", "--set", "train.cpu_threads=2"]) == 0
    assert load_checkpoint(out / "last.pth")["cpu_threads"] == 2  # the count the run now continues with


class RecordingGovernor:
    """Stands in for ThreadGovernor: counts the governors made and their updates."""
    made: list["RecordingGovernor"] = []

    def __init__(self):
        self.limit, self.updates = torch.get_num_threads(), 0
        RecordingGovernor.made.append(self)

    def update(self) -> None:
        self.updates += 1


@pytest.mark.parametrize("flag", [[], ["--adaptive_threads"]])
def test_only_adaptive_threads_run_the_governor_one_for_the_whole_run(standins, monkeypatch, tmp_path, flag):
    monkeypatch.setattr(main, "ThreadGovernor", RecordingGovernor)
    monkeypatch.setattr(RecordingGovernor, "made", [])
    out = tmp_path / "out"
    assert main.main(["--config", str(standin_config(tmp_path)), "--output_dir", str(out), "--max_steps", "6",
                      "--device", "cpu", *flag]) == 0
    if not flag:
        assert RecordingGovernor.made == []
        return
    # 4 steps an epoch: one governor across the epoch boundary (its ceiling is the run's count), one update a step
    [governor] = RecordingGovernor.made
    assert governor.updates == 6 and governor.limit == torch.get_num_threads()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["adaptive_threads"] is True
