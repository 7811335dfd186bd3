"""Stop at a safe point when SIGTERM or SIGINT arrives, also when the signal reaches the whole process tree.

A scheduler's preemption, ``scancel``, a time limit (Slurm: every process of the job step), ``timeout`` and
``kill -- -PGID`` (the whole process group) send SIGTERM to every process of the job at once: the data-loader
workers too, and under ``torchrun`` the elastic agent, which forwards a SIGTERM of its own to each rank's process
group. The main process of each rank owns the stop:

- ``GracefulStop``: the first SIGTERM or SIGINT only sets a flag. The training loop reads it after each step (all
  ranks agree on it, ``util.distributed.any_rank_max``), writes a checkpoint and returns, and ``main.py`` exits with
  ``128 + signal number`` (143 for SIGTERM, 130 for SIGINT). A repeated SIGTERM changes nothing: under Slurm plus
  torchrun every rank gets two (the scheduler's and the agent's), and schedulers escalate with SIGKILL themselves
  (Slurm after ``KillWait``, torchrun after its ``--shutdown_timeout``). A SIGINT after the first signal acts at
  once (Ctrl-C twice, or Ctrl-C after a SIGTERM: ``KeyboardInterrupt``). With ``exit_at_once`` (inference: each
  video is written atomically) the first signal raises ``SystemExit(128 + signal number)`` instead, so that the
  cleanups of the video in progress run.
- ``StopSafeDataLoader``: a DataLoader whose workers leave the stop to their parent. torch's workers install a C
  handler that kills the worker on a SIGTERM from anyone but its parent (``torch/csrc/DataLoader.cpp``,
  ``handler_SIGTERM``), and the parent's SIGCHLD handler then raises "DataLoader worker ... is killed by signal:
  Terminated" in the middle of the step. Here a worker starts with SIGTERM and SIGINT blocked (the parent blocks
  them around the fork, so that under the default ``fork`` start method there is no moment at which a worker can
  die of them, nor with ``spawn``, whose child inherits the mask too; a ``forkserver`` worker forks from a server
  started earlier and is exposed from torch's handler installation until ``worker_init_fn`` blocks them), ignores
  SIGINT, and takes SIGTERM from a thread that waits for it (``sigwaitinfo``) and ends the worker only when the
  parent sent it: the parent's own shutdown of a stuck worker (``Process.terminate``) still works, a group SIGTERM
  does nothing.
"""
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from torch.utils.data import DataLoader

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STDERR = 2  # the file descriptor


class GracefulStop:
    """Context manager: while active, the first of ``STOP_SIGNALS`` sets ``signum`` (0 = no stop requested) instead
    of acting; a repeated SIGTERM is ignored and a SIGINT after it raises ``KeyboardInterrupt`` (module doc).

    ``exit_at_once``: the first signal raises ``SystemExit(128 + signum)`` in the main thread right away.
    Outside the main thread (where Python cannot install handlers) it does nothing and ``signum`` stays 0.
    The previous handlers are restored on exit.
    """

    def __init__(self, exit_at_once: bool = False):
        self.signum = 0
        self.exit_at_once = exit_at_once
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum:  # a stop is under way: a second Ctrl-C means now, a repeated SIGTERM is a copy (module doc)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        name = signal.Signals(signum).name
        if self.exit_at_once:
            message = f"received {name}: stopping now"
        else:
            message = (f"received {name}: stopping after the current step with a checkpoint (Ctrl-C again stops at "
                       f"once; a repeated SIGTERM changes nothing)")
        # os.write, not print: the handler may run inside a print of the main thread (a reentrant call error).
        os.write(STDERR, f"{message}\n".encode())
        if self.exit_at_once:
            raise SystemExit(128 + signum)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """``STOP_SIGNALS`` blocked in the calling thread for the block (processes it forks inherit the mask); one that
    arrives meanwhile is delivered when the block ends, or at once to another thread of the process."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _exit_on_sigterm_from_parent() -> None:
    """Wait for SIGTERM (blocked in every thread of this worker) and end the worker only when its parent sent it,
    as torch's own worker handler does (exit status 0, which the parent's SIGCHLD check accepts)."""
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == os.getppid():
            os._exit(0)


def leave_stop_to_parent(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: this worker ignores SIGINT and every SIGTERM but its parent's (module doc).

    Blocking SIGTERM again here covers start methods whose workers do not inherit the parent's blocked mask
    (forkserver); with fork and spawn it is already blocked.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # also drops a SIGINT that is already pending
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    threading.Thread(target=_exit_on_sigterm_from_parent, name="sigterm_from_parent", daemon=True).start()


class StopSafeDataLoader(DataLoader):
    """A ``DataLoader`` whose worker processes ignore SIGINT and other processes' SIGTERM (module doc), so that a
    signal sent to the whole process group reaches the training loop's ``GracefulStop`` alone.

    Takes DataLoader's arguments but ``worker_init_fn``, which it sets.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, worker_init_fn=leave_stop_to_parent, **kwargs)

    def __iter__(self):
        # Workers start (fork) in the iterator's constructor: they inherit the blocked mask.
        with stop_signals_blocked():
            return super().__iter__()
