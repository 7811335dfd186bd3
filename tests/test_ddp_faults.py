"""Faults in a two-process gloo run under torchrun: a rank that raises ends the job promptly with a non-zero
status; a stop signal that reaches one rank only stops both at the same step, with a checkpoint; SIGTERM to every
process of the job (as Slurm sends it: torchrun, the ranks and their data-loader workers) stops every rank at the
same step with a checkpoint and status 143, and ``--resume`` ends with the weights of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.train_standins import TinyModel, tiny_config
from util.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIG = tiny_config(seed=7, epochs=20, lr_drop=[1], checkpoint_every=3)
TRAINED = [name for name, param in TinyModel(0.5).named_parameters() if param.requires_grad]


def torchrun(tmp_path: Path, *args: str, **fault_env: str) -> subprocess.Popen:
    """``torchrun --nproc_per_node 2 -m tests.fault_standins --config <CONFIG> --output_dir <tmp_path>/out *args``,
    in a session of its own (the ranks get their own sessions from torchrun)."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "OMP_NUM_THREADS": "1", **fault_env,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tests.fault_standins", "--config", str(tmp_path / "ddp.yaml"), "--device", "cpu",
               "--output_dir", str(tmp_path / "out"), *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_checkpoint_and_pids(job: subprocess.Popen, last: Path, pids: Path) -> None:
    deadline = time.monotonic() + 90
    while not (last.is_file() and (pids / "pid0").is_file() and (pids / "pid1").is_file()):
        assert job.poll() is None, job.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.01)


def finish(job: subprocess.Popen, timeout: float = 90) -> tuple[str, str]:
    try:
        return job.communicate(timeout=timeout)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


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
    wait_for_checkpoint_and_pids(job, last, pids)
    os.kill(int((pids / "pid1").read_text()), signal.SIGTERM)  # rank 1 only; rank 0 learns it by the all-reduce
    stdout, stderr = finish(job, timeout=60)
    assert job.returncode != 0  # torchrun reports the workers' status 143 as a failure
    assert (pids / "status0").read_text() == (pids / "status1").read_text() == "143"
    assert "stopped by SIGTERM after step" in stdout
    out = tmp_path / "out"
    saved = load_checkpoint(last)
    assert 3 <= saved["step"] < 20 * 2
    rank0, rank1 = torch.load(out / "rank0.pth", weights_only=True), torch.load(out / "rank1.pth", weights_only=True)
    for name, param in TinyModel(0.5).named_parameters():
        if param.requires_grad:  # both ranks stopped after the same step, the one the checkpoint holds
            assert torch.equal(rank0[name], rank1[name]), name
            assert torch.equal(rank0[name], saved["model"][name]), name


def stop_the_whole_job(tmp_path: Path, max_steps: int) -> Path:
    """Start a torchrun job (2 workers a rank) and, after its first checkpoint, send SIGTERM as Slurm does to every
    process of the job step: torchrun (whose agent then forwards a SIGTERM of its own to each rank's process
    group), each rank and each rank's data-loader workers. Checks that every rank finished the same step and
    exited 143 after one checkpoint, torchrun itself 1 (its agent ends on a SignalException); returns the
    checkpoint."""
    pids = tmp_path / "pids"
    pids.mkdir(parents=True)
    job = torchrun(tmp_path, "--num_workers", "2", "--max_steps", str(max_steps), FAULT_STEP_SLEEP="0.05",
                   FAULT_PID_DIR=str(pids))
    last = tmp_path / "out" / "last.pth"
    wait_for_checkpoint_and_pids(job, last, pids)
    for group in (job.pid, int((pids / "pid0").read_text()), int((pids / "pid1").read_text())):
        os.killpg(group, signal.SIGTERM)  # each rank leads a process group with its workers (torchrun's doing)
    stdout, stderr = finish(job)
    assert job.returncode == 1 and "SignalException" in stderr, stderr[-3000:]
    assert (pids / "status0").read_text() == (pids / "status1").read_text() == "143", stderr[-3000:]
    assert "DataLoader worker" not in stderr and stdout.count("stopped by SIGTERM after step") == 1
    saved = load_checkpoint(last)
    assert 3 <= saved["step"] < max_steps
    for rank in (0, 1):  # both ranks stopped after the step the checkpoint holds
        weights = torch.load(tmp_path / "out" / f"rank{rank}.pth", weights_only=True)
        assert all(torch.equal(weights[name], saved["model"][name]) for name in TRAINED), rank
    return last


def test_sigterm_to_every_process_of_the_job_stops_all_ranks_at_one_step_with_status_143(tmp_path):
    stop_the_whole_job(tmp_path, max_steps=40)


@pytest.mark.slow  # three torchrun jobs, 25 s: .ci/run runs it (-m slow)
def test_resume_after_sigterm_to_the_whole_job_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    max_steps = 12
    last = stop_the_whole_job(tmp_path / "stopped", max_steps)
    resumed = finish(torchrun(tmp_path / "stopped", "--num_workers", "2", "--max_steps", str(max_steps),
                              "--resume", str(last)))
    reference = finish(torchrun(tmp_path / "whole", "--max_steps", str(max_steps)))
    assert "Traceback" not in resumed[1] + reference[1], (resumed[1] + reference[1])[-3000:]
    a, b = load_checkpoint(tmp_path / "whole" / "out" / "last.pth"), load_checkpoint(last)
    assert (a["epoch"], a["step"], a["data_position"]) == (b["epoch"], b["step"], b["data_position"])
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
