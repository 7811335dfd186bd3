"""util/graceful_stop.py: which signal does what, and data-loader workers that leave the stop to their parent."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from torch.utils.data import DataLoader, Dataset

from util.graceful_stop import GracefulStop, StopSafeDataLoader


def test_a_repeated_sigterm_changes_nothing():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # Slurm's and torchrun's: the second must not end the process
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_a_second_sigint_acts_at_once():
    with GracefulStop() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    with GracefulStop() as stop, pytest.raises(KeyboardInterrupt):  # also after a SIGTERM: Ctrl-C while it stops
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
    assert stop.signum == signal.SIGTERM  # the exit status stays the first signal's


def test_exit_at_once_raises_system_exit_with_the_shell_status_once():
    with GracefulStop(exit_at_once=True) as stop:
        with pytest.raises(SystemExit) as ended:
            signal.raise_signal(signal.SIGTERM)
        assert ended.value.code == 128 + signal.SIGTERM == 143
        signal.raise_signal(signal.SIGTERM)  # a repeat must not break the cleanups the first one started
        assert stop.signum == signal.SIGTERM


class Pids(Dataset):
    """Item ``i``: the pid of the worker that loaded it."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> int:
        return os.getpid()


def sigterm_pending(pid: int) -> bool:
    """Whether ``pid`` has a SIGTERM queued that no thread has taken yet (``ShdPnd``/``SigPnd`` of /proc)."""
    bit = 1 << (signal.SIGTERM - 1)
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        pending |= int(status.split("SigPnd:\t", 1)[1].split()[0], 16)
    return bool(pending & bit)


def state(pid: int) -> str:
    """The process state letter of /proc/<pid>/stat ("Z": ended, not yet reaped; "gone": reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within 30 s"
        time.sleep(0.01)


@pytest.mark.parametrize("loader_class", [StopSafeDataLoader, DataLoader])
def test_workers_ignore_another_process_sigterm_but_end_on_their_parents(loader_class):
    """A SIGTERM from another process (``kill``, as a scheduler's) leaves a StopSafeDataLoader worker running; the
    plain DataLoader's worker dies of it (torch's handler), which is what this guards against. The parent's own
    SIGTERM (its shutdown of a stuck worker) still ends a StopSafeDataLoader worker, with status 0."""
    iterator = iter(loader_class(Pids(), batch_size=None, num_workers=2))
    try:
        workers = [next(iterator), next(iterator)]  # items go round-robin: one from each worker
        assert len(set(workers)) == 2 and os.getpid() not in workers
        subprocess.run(["kill", "-TERM", str(workers[0])], check=True)  # the sender is not the worker's parent
        if loader_class is DataLoader:
            # torch's SIGCHLD check says "is killed by signal: Terminated", its read loop "exited unexpectedly"
            with pytest.raises(RuntimeError, match=rf"DataLoader worker \(pid(\(s\))? {workers[0]}\)"):
                list(iterator)
            return
        wait_until(lambda: not sigterm_pending(workers[0]), "SIGTERM taken by the worker")
        assert state(workers[0]) not in ("Z", "gone")
        assert sorted(iterator) == sorted([workers[0]] * 3 + [workers[1]] * 3)  # both still serve their items
    finally:
        del iterator  # shuts the workers down (the plain loader's SIGCHLD check may have raised above)


def test_a_stop_safe_worker_ends_on_its_parents_sigterm():
    iterator = iter(StopSafeDataLoader(Pids(), batch_size=None, num_workers=1))
    worker = next(iterator)
    os.kill(worker, signal.SIGTERM)

    def ended():  # without reaping it (nothing else does while nothing is read from the loader)
        return os.waitid(os.P_PID, worker, os.WEXITED | os.WNOHANG | os.WNOWAIT)

    wait_until(lambda: ended() is not None, "end of the worker")
    assert (ended().si_code, ended().si_status) == (os.CLD_EXITED, 0)  # as torch's own handler exits on it
    del iterator
