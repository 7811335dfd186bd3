"""main.py on the stand-ins of ``tests/train_standins.py`` with injected faults, run as a module:

    [torchrun ...] python -m tests.fault_standins <main.py arguments>

Environment variables (all optional):

- ``FAULT_STEP_SLEEP``: seconds each training step sleeps, so that a test can signal or kill the run mid-way;
- ``FAULT_RAISE_RANK`` and ``FAULT_RAISE_STEP``: that rank raises ``RuntimeError`` in its ``FAULT_RAISE_STEP``-th
  loss computation (1-based);
- ``FAULT_PID_DIR``: each process writes its pid to ``<dir>/pid<RANK>`` before training and main.py's exit status
  to ``<dir>/status<RANK>`` when main returns (torchrun's own exit status does not tell the ranks').

Each process ends with main.py's exit status (after writing its trainable weights to ``<--output_dir>/rank<RANK>.pth``
when main returned), as ``train_standins.run_main`` does.
"""
import os
import sys
import time
from pathlib import Path

from tests import train_standins

RANK = int(os.environ.get("RANK", "0"))


class FaultyCriterion(train_standins.TinyCriterion):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.sleep = float(os.environ.get("FAULT_STEP_SLEEP", "0"))
        raise_rank = os.environ.get("FAULT_RAISE_RANK")
        self.raise_at = int(os.environ["FAULT_RAISE_STEP"]) if raise_rank is not None and int(raise_rank) == RANK else 0

    def forward(self, outputs, targets):
        self.calls += 1
        if self.calls == self.raise_at:
            raise RuntimeError(f"injected fault on rank {RANK} at step {self.calls}")
        time.sleep(self.sleep)
        return super().forward(outputs, targets)


def build_model(cfg: dict):
    model, _ = train_standins.build_model(cfg)
    return model, FaultyCriterion()


if __name__ == "__main__":
    pid_dir = os.environ.get("FAULT_PID_DIR")
    if pid_dir is not None:
        Path(pid_dir, f"pid{RANK}").write_text(str(os.getpid()))
    status = train_standins.run_main(build_model)
    if pid_dir is not None:
        Path(pid_dir, f"status{RANK}").write_text(str(status))
    sys.exit(status)
