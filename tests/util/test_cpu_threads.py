import os

import pytest
import torch

from util import cpu_threads
from util.cpu_threads import ThreadGovernor, free_threads, run_thread_count, threads_for
from util.errors import UserInputError


def test_a_runs_thread_count_is_the_configured_then_the_recorded_then_the_free_cores():
    assert run_thread_count(configured=3, recorded=2, free=1) == (3, "train.cpu_threads")
    assert run_thread_count(configured=None, recorded=2, free=1) == (2, "recorded with the resumed run")
    assert run_thread_count(configured=None, recorded=None, free=1)[0] == 1  # a new run, an old checkpoint
    with pytest.raises(UserInputError, match="train.cpu_threads is 0: give a thread count >= 1"):
        run_thread_count(configured=0, recorded=None, free=1)


def test_free_threads_leave_a_core_per_competitor_up_to_the_limit(monkeypatch):
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: 4)
    monkeypatch.setattr(cpu_threads, "competing_tasks", lambda: 1.0)
    assert free_threads(limit=8) == 3 and free_threads(limit=2) == 2


def test_threads_for_leaves_a_core_per_competitor():
    assert threads_for(cores=2, competitors=0.0, limit=2) == 2
    assert threads_for(cores=2, competitors=1.0, limit=2) == 1
    assert threads_for(cores=8, competitors=2.6, limit=8) == 5  # 2.6 runnable tasks on average -> 3 cores taken
    assert threads_for(cores=2, competitors=5.0, limit=2) == 1  # never below one
    assert threads_for(cores=16, competitors=0.0, limit=4) == 4  # never above what the process started with


def test_competing_tasks_counts_other_runnable_threads(monkeypatch):
    own, nice = os.getpid(), os.nice(0)  # the shield is relative to this process's own nice value
    states = [(own, "R", nice), (own, "R", nice), (1, "S", nice), (2, "R", nice), (3, "R", nice), (3, "R", nice + 10)]
    monkeypatch.setattr(cpu_threads, "task_states", lambda: states)
    monkeypatch.setattr(cpu_threads, "nice_shields", lambda: True)
    assert cpu_threads.competing_tasks(samples=2) == 2.0  # own and sleeping threads out; the niced one shielded
    monkeypatch.setattr(cpu_threads, "nice_shields", lambda: False)  # autogroup: nice does not protect us
    assert cpu_threads.competing_tasks(samples=1) == 3.0


def test_task_states_sees_this_thread_running():
    assert (os.getpid(), "R", os.nice(0)) in cpu_threads.task_states()


def test_governor_follows_competitors_and_restores(monkeypatch):
    before = torch.get_num_threads()
    competitors = [1.0]
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: 2)
    monkeypatch.setattr(cpu_threads, "competing_tasks", lambda: competitors[0])
    try:
        torch.set_num_threads(2)
        governor = ThreadGovernor(interval_s=0.0)
        assert governor.limit == 2
        assert governor.update() == 1 and torch.get_num_threads() == 1
        assert governor.update() is None  # unchanged
        competitors[0] = 0.0
        assert governor.update() == 2 and torch.get_num_threads() == 2
        slow = ThreadGovernor(interval_s=3600.0)
        competitors[0] = 1.0
        assert slow.update() == 1
        competitors[0] = 0.0
        assert slow.update() is None and torch.get_num_threads() == 1  # not looked at again before the interval
    finally:
        torch.set_num_threads(before)
