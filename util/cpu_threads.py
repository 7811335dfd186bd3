"""CPU threads of a training run: a count chosen when the run starts and kept to its end (the default), or one that
follows the cores other processes leave free all along (``train.adaptive_threads``).

Why not as many threads as cores: every parallel region (a convolution, a matmul, our deformable-attention kernel)
ends when its slowest thread does. When another CPU-bound process takes one of the cores, the thread that shares it
runs a fraction of the time, the others wait for it at the end of every region, and the whole step crawls: on the
2-core development machine a tiny RefShapes training step went from 0.25 s to 0.9 s beside one busy loop and, at
32 px (many small regions), from 0.1 s to 11 s beside a ``nice -n 19`` job (``benchmarks/bench_contention.py``).
With one thread fewer than the runnable competitors the slowdown is proportional again.

Why one count for the whole run: reductions on the CPU split their work by thread and add the partial results in
that order, so the last bits of every step depend on the thread count (the tiny HCD's weights after six steps at
one and at two threads differ by 2e-4). A count that changes during a run makes neither its ``--resume`` nor a
second identical run bit-identical.

So ``main.py`` chooses the count once (``run_thread_count``: the config's ``train.cpu_threads``; else, resuming,
the count recorded in the checkpoint; else the cores free when the run starts, ``free_threads``), prints it,
records it in every checkpoint and keeps it: a run and its ``kill -9`` + ``--resume`` end bit-identical, and so do
two runs with the same count (``train.cpu_threads`` fixes it for runs started at different loads). A process that
starts beside the run later is not given way to. ``train.adaptive_threads`` gives way all along
(:class:`ThreadGovernor`), at the price of bit-exactness.

The cores free: the cores this process may run on (its affinity) minus the other processes' runnable threads
(state R in ``/proc/*/task/*/stat``), never more than the count torch started with (``OMP_NUM_THREADS`` or the
machine's cores), never less than one. Counting runnable threads rather than CPU time matters: a competitor that
gets little CPU time still stalls every parallel region with its slices. Only threads niced far above ours are
left out, where nice means something: with autogroup scheduling on (the default of most desktop kernels),
``nice -n 19`` in another terminal does not lower that process's share, and the measured slowdown was the same as
without it.
"""
import os
import time
from pathlib import Path

import torch

from util.errors import UserInputError

SAMPLES = 3  # looks at /proc per update; a thread's state is instantaneous, so average a few
SAMPLE_GAP_S = 0.002


def run_thread_count(configured: int | None, recorded: int | None, free: int) -> tuple[int, str]:
    """``(threads, where the count comes from)`` for a run: ``configured`` (``train.cpu_threads``) when set, else
    ``recorded`` (the count the resumed checkpoint was trained with; None for a new run or an older checkpoint),
    else ``free`` (``free_threads`` when the run starts)."""
    if configured is not None:
        if configured < 1:
            raise UserInputError(f"train.cpu_threads is {configured}: give a thread count >= 1, or null for the "
                                 f"count recorded with a resumed run, else the cores free when the run starts")
        return configured, "train.cpu_threads"
    if recorded is not None:
        return recorded, "recorded with the resumed run"
    return free, "the cores free at its start; train.cpu_threads sets it"


def free_threads(limit: int) -> int:
    """The cores that other processes leave free now (module doc), in [1, ``limit``]; ``limit`` where ``/proc`` is
    missing (not Linux)."""
    if not Path("/proc/self/task").is_dir():
        return limit
    return threads_for(available_cores(), competing_tasks(), limit)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity)."""
    return len(os.sched_getaffinity(0))


def task_states() -> list[tuple[int, str, int]]:
    """``(pid, state, nice)`` of every thread on the machine (``/proc/<pid>/task/<tid>/stat``)."""
    states = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:  # the process ended
            continue
        for task in tasks:
            try:
                stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # fields 3.. of proc(5): state is 3, nice is 19
            states.append((int(pid), fields[0], int(fields[16])))
    return states


def nice_shields() -> bool:
    """Whether a higher nice value lowers a task's share against ours: not under autogroup scheduling, where
    each session is one group and nice only orders the tasks inside it (``sched_autogroup_enabled``)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "0"
    except OSError:
        return True


def competing_tasks(samples: int = SAMPLES) -> float:
    """Mean number of other processes' runnable threads over ``samples`` looks.

    Threads niced 10 or more above this process get under a tenth of a core against it and do not count, unless
    autogroup scheduling makes nice values meaningless between sessions.
    """
    own_pid, own_nice, shields = os.getpid(), os.nice(0), nice_shields()
    total = 0
    for index in range(samples):
        if index:
            time.sleep(SAMPLE_GAP_S)
        total += sum(1 for pid, state, nice in task_states()
                     if pid != own_pid and state == "R" and not (shields and nice - own_nice >= 10))
    return total / samples


def threads_for(cores: int, competitors: float, limit: int) -> int:
    """The thread count for ``cores`` usable cores with ``competitors`` other runnable tasks, in [1, limit]."""
    return max(1, min(limit, cores - round(competitors)))


class ThreadGovernor:
    """Keeps ``torch.get_num_threads()`` at the cores other processes leave free (``free_threads``), at most the
    count it was created with.

    Call :meth:`update` often (every training step); it looks at the machine at most every ``interval_s``
    seconds and returns the thread count it set when it changed it, else None.
    """

    def __init__(self, interval_s: float = 5.0):
        self.interval_s = interval_s
        self.limit = torch.get_num_threads()
        self._next_look = 0.0

    def update(self) -> int | None:
        now = time.monotonic()
        if now < self._next_look:
            return None
        self._next_look = now + self.interval_s
        threads = free_threads(self.limit)
        if threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return threads
