"""Stop a training run at the next optimizer-step boundary when SIGTERM or SIGINT arrives.

A scheduler's preemption (SIGTERM) or a Ctrl-C (SIGINT) only sets a flag here; the training loop reads it after each
step (all ranks agree on it, see ``util.distributed.any_rank_max``), writes a checkpoint and returns, and
``main.py`` exits with ``128 + signal number`` (143 for SIGTERM, 130 for SIGINT): the shell convention for "ended by
that signal", so that ``train && evaluate`` chains and job schedulers see an unfinished run, while the checkpoint
lets ``--resume`` continue it exactly. A second signal of the same kind acts at once, as if no handler were
installed (Ctrl-C twice: ``KeyboardInterrupt``; SIGTERM twice: the process ends).

Data-loader workers forked while the handlers are installed inherit them, so a Ctrl-C sent to the whole process
group does not kill the workers before the main process has stopped cleanly.
"""
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """Context manager: while active, ``STOP_SIGNALS`` set ``signum`` (0 = no stop requested) instead of acting.

    Outside the main thread (where Python cannot install handlers) it does nothing and ``signum`` stays 0.
    The previous handlers are restored on exit.
    """

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum == signum:
            signal.signal(signum, self._previous[signum])
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(f"received {signal.Signals(signum).name}: stopping after the current step with a checkpoint "
              f"(send it again to stop at once)", flush=True)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
