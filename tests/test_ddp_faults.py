"""Faults in a two-process gloo run under torchrun: a rank that raises ends the job promptly with a non-zero
status, and a stop signal that reaches one rank only stops both at the same step, with a checkpoint."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from tests.train_standins import TinyModel, tiny_config
from util.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIG = tiny_config(seed=7, epochs=20, lr_drop=[1], checkpoint_every=3)


def torchrun(tmp_path: Path, **fault_env: str) -> subprocess.Popen:
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "OMP_NUM_THREADS": "1", **fault_env,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.fault_standins", "--config", str(tmp_path / "ddp.yaml"), "--device", "cpu",
               "--output_dir", str(tmp_path / "out")]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_rank_that_raises_ends_the_whole_job_promptly(tmp_path):
    job = torchrun(tmp_path, FAULT_RAISE_RANK="1", FAULT_RAISE_STEP="2")
    started = time.monotonic()
    try:
        _, stderr = job.communicate(timeout=90)
    finally:
        job.kill()
    seconds = time.monotonic() - started
    assert job.returncode != 0
    assert "injected fault on rank 1 at step 2" in stderr
    # Far below the 10-minute collective timeout: the other rank did not wait for the dead one.
    assert seconds < 60, f"the job took {seconds:.0f} s to end"
    assert not (tmp_path / "out" / "last.pth").exists()  # it failed before the first checkpoint (step 3)


def test_sigterm_to_one_rank_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    job = torchrun(tmp_path, FAULT_STEP_SLEEP="0.05", FAULT_PID_DIR=str(pids))
    last = tmp_path / "out" / "last.pth"
    deadline = time.monotonic() + 90
    while not (last.is_file() and (pids / "pid1").is_file()):
        assert job.poll() is None, job.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.01)
    os.kill(int((pids / "pid1").read_text()), signal.SIGTERM)  # rank 1 only; rank 0 learns it by the all-reduce
    try:
        stdout, stderr = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode != 0  # torchrun reports the workers' status 143 as a failure
    assert "stopped by SIGTERM after step" in stdout
    out = tmp_path / "out"
    saved = load_checkpoint(last)
    assert 3 <= saved["step"] < 20 * 2
    rank0, rank1 = torch.load(out / "rank0.pth", weights_only=True), torch.load(out / "rank1.pth", weights_only=True)
    for name, param in TinyModel(0.5).named_parameters():
        if param.requires_grad:  # both ranks stopped after the same step, the one the checkpoint holds
            assert torch.equal(rank0[name], rank1[name]), name
            assert torch.equal(rank0[name], saved["model"][name]), name
