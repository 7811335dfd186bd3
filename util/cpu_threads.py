"""CPU threads that follow the cores other processes leave free.

PyTorch's intra-op thread pool is as wide as the machine, and every parallel region (a convolution, a matmul,
our deformable-attention kernel) ends when its slowest thread does. When another CPU-bound process takes one
of the cores, the thread that shares it runs a fraction of the time, the others wait for it at the end of every
region, and the whole step crawls: on the 2-core development machine a tiny RefShapes training step went from
0.5 s to 4-10 s with one ``nice -n 19`` busy loop beside it (``benchmarks/bench_contention.py``). With one thread
fewer than the runnable competitors the slowdown is proportional again.

:class:`ThreadGovernor` looks at the machine every few seconds and sets ``torch.set_num_threads`` to the cores
that the other processes leave: the cores this process may run on (its affinity) minus the other runnable
tasks (``/proc/loadavg``'s running count, less this process's own running threads), never more than the
thread count the process started with (``OMP_NUM_THREADS`` or torch's default), never less than one.
Counting runnable tasks rather than CPU time matters: a niced competitor gets little CPU time, yet its slices
are enough to stall every parallel region.
"""
import os
import time
from pathlib import Path

import torch

SAMPLES = 5  # /proc reads per look; the running count is instantaneous, so average a few
SAMPLE_GAP_S = 0.002


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity)."""
    return len(os.sched_getaffinity(0))


def running_tasks() -> int:
    """Runnable tasks on the whole machine now (the fourth field of ``/proc/loadavg``, "running/total")."""
    return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])


def own_running_threads() -> int:
    """Threads of this process that are runnable now (state R in ``/proc/self/task/*/stat``)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{task}/stat").read_text()
        except OSError:  # the thread ended between listdir and the read
            continue
        count += stat[stat.rindex(")") + 2] == "R"
    return count


def competing_tasks(samples: int = SAMPLES) -> float:
    """Mean number of other processes' runnable tasks over ``samples`` quick looks."""
    total = 0
    for index in range(samples):
        if index:
            time.sleep(SAMPLE_GAP_S)
        total += max(0, running_tasks() - own_running_threads())
    return total / samples


def threads_for(cores: int, competitors: float, limit: int) -> int:
    """The thread count for ``cores`` usable cores with ``competitors`` other runnable tasks, in [1, limit]."""
    return max(1, min(limit, cores - round(competitors)))


class ThreadGovernor:
    """Keeps ``torch.get_num_threads()`` at the cores other processes leave free (module docstring).

    Call :meth:`update` often (every training step); it looks at the machine at most every ``interval_s``
    seconds and returns the thread count it set when it changed it, else None. Does nothing where ``/proc`` is
    missing (not Linux).
    """

    def __init__(self, interval_s: float = 2.0):
        self.interval_s = interval_s
        self.limit = torch.get_num_threads()
        self.enabled = Path("/proc/loadavg").is_file() and Path("/proc/self/task").is_dir()
        self._next_look = 0.0

    def update(self) -> int | None:
        now = time.monotonic()
        if not self.enabled or now < self._next_look:
            return None
        self._next_look = now + self.interval_s
        threads = threads_for(available_cores(), competing_tasks(), self.limit)
        if threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return threads
