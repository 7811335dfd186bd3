"""main.py on the stand-ins of ``tests/train_standins.py`` with injected faults, run as a module:

    [torchrun ...] python -m tests.fault_standins <main.py arguments>

Environment variables (all optional):

- ``FAULT_STEP_SLEEP``: seconds each training step sleeps, so that a test can signal or kill the run mid-way;
- ``FAULT_RAISE_RANK`` and ``FAULT_RAISE_STEP``: that rank raises ``RuntimeError`` in its ``FAULT_RAISE_STEP``-th
  loss computation (1-based);
- ``FAULT_PID_DIR``: each process writes its pid to ``<dir>/pid<RANK>`` before training.

Each process ends with main.py's exit status (after writing its trainable weights to ``<--output_dir>/rank<RANK>.pth``
when main returned).
"""
import os
import sys
import time
import types
from pathlib import Path

import torch

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
    # As in train_standins: the stand-ins under the real import names, so main.py skips HCD's heavy imports.
    for package, name, builder in (("models", "build_model", build_model),
                                   ("datasets", "build_dataset", train_standins.build_dataset)):
        sys.modules[package] = types.ModuleType(package)
        setattr(sys.modules[package], name, builder)
    import main
    from util.checkpoint import trainable_state_dict

    if "FAULT_PID_DIR" in os.environ:
        Path(os.environ["FAULT_PID_DIR"], f"pid{RANK}").write_text(str(os.getpid()))
    status = main.main(sys.argv[1:])
    output_dir = main.build_parser().parse_args(sys.argv[1:]).output_dir  # the tests always pass --output_dir
    torch.save(trainable_state_dict(train_standins.BUILT_MODELS[-1]), os.path.join(output_dir, f"rank{RANK}.pth"))
    sys.exit(status)
