"""Training log of rank 0: one JSON object per line in ``log.jsonl`` and the same numbers as TensorBoard scalars."""
import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from util.atomic_write import atomic_write

# Record fields that index a record rather than measure something; they are not plotted.
INDEX_FIELDS = ("epoch", "step")


class TrainLog:
    """Appends records to ``output_dir/log.jsonl`` and writes their numbers to TensorBoard in ``output_dir/tb``.

    A record is a flat dict such as ``{"epoch": 0, "step": 20, "lr": 1e-4, "loss": 3.2, "loss_dice": 0.4,
    "time": 0.51}``; its numeric fields other than ``epoch``/``step`` become scalars ``train/<field>`` at
    global step ``record["step"]``. Each line is flushed at once, so the file can be followed during a run.

    ``resumed_step``: the step of the checkpoint a resumed run continues from. The records after it, written by
    the interrupted run after its last checkpoint (and a line cut short by a crash), are dropped from
    ``log.jsonl`` and hidden in TensorBoard, so the log reads as if the run had never stopped.
    """

    def __init__(self, output_dir: str | Path, resumed_step: int | None = None):
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / "log.jsonl"
        if resumed_step is not None and self.path.is_file():
            kept = [line for line in complete_records(self.path.read_text()) if json.loads(line)["step"] <= resumed_step]
            atomic_write(self.path, lambda f: f.write("".join(kept).encode()))
        self._file = self.path.open("a")
        purge_step = None if resumed_step is None else resumed_step + 1
        self._writer = SummaryWriter(log_dir=str(output_dir / "tb"), purge_step=purge_step)

    def write(self, record: dict) -> None:
        # allow_nan=False: a NaN reaching the log is a bug upstream (the engine stops on non-finite losses).
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        for name, value in record.items():
            if name not in INDEX_FIELDS and isinstance(value, (int, float)):
                self._writer.add_scalar(f"train/{name}", value, global_step=record["step"])
        self._writer.flush()

    def close(self) -> None:
        self._file.close()
        self._writer.close()



def complete_records(text: str) -> list[str]:
    """The newline-terminated lines of ``text`` (a last line without newline was cut short by a crash)."""
    return text.splitlines(keepends=True)[: text.count("\n")]
