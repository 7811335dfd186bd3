"""Seconds per training step and clips/s of the tiny HCD at several batch sizes, and the share of a step that is
host overhead, JSON on the last line.

    python -m benchmarks.bench_train_step --json                           # cuda when visible, batches 1 4 16
    python -m benchmarks.bench_train_step --device cpu --batch_sizes 1 2 4 --json
    python -m benchmarks.bench_train_step --dry_run --json                 # seconds on the CPU: the script works

The model is ``configs/refshapes_tiny.yaml`` over the tiny offline components (``testing/tiny_weights.py``, built
in a temporary folder; random weights), float32. A batch is B synthetic clips of --frames frames of --size x
--size pixels with one caption and one square target each (``benchmarks/full_size.py`` ``synthetic_clip``). A step
is what ``engine.train_one_epoch`` does per batch: move the batch to the device, forward (the matcher included),
the weighted losses, zero_grad, backward, gradient clipping at ``train.clip_max_norm``, AdamW step. Per batch size:
--warmup steps, then --steps timed steps (the device synchronised before and after each), then one more step under
``torch.profiler``. ``step_s`` is the median of the timed steps, ``clips_per_s`` = batch / step_s.

``overhead_share``, from the profiled step:

- cuda: the share of the step's wall time in which no GPU kernel, copy or memset runs (1 - the union of their
  intervals / the step's interval): host time not overlapped by device work (Python, dispatch, synchronisations).
- cpu: the share of the step's wall time spent outside every ``aten::`` operator (1 - the union of the intervals
  of all ``aten::`` events, any thread / the step's interval): Python frames, module and autograd bookkeeping and
  the dispatcher, as against the operators' own work. The profiler's own recording adds to the outside part, so
  this is an upper estimate.

``op_calls`` is the number of ``aten::`` operator calls in the profiled step (nested calls included): a per-clip
Python loop shows as calls that grow with the batch.
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.fps_protocol import synchronize, timed
from benchmarks.full_size import synthetic_clip, trainable_parameters
from engine import targets_to, to_float32, weighted_losses
from models import build_model
from models.pretrained import load_pretrained
from testing.tiny_weights import build_tiny_weights
from util.config import load_config

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "refshapes_tiny.yaml"
STEP_EVENT = "bench_train_step"
# --dry_run: batch sizes, timed steps, warm-up steps, frames, size.
# (Not batch 1: the CPU convolutions pick other kernels for a single clip, so its operator count is not comparable.)
DRY_RUN = {"batch_sizes": [2, 3], "steps": 2, "warmup": 0, "frames": 2, "size": 64}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the step runs (default: cuda when a GPU is visible, else cpu)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4, 16],
                        help="clips per step, one measurement each, in this order (default 1 4 16)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per batch size; step_s is their median "
                                                             "(default 5)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per batch size before the timed ones (default 2: the first allocates "
                             "AdamW's state and compiles the deformable-attention kernel)")
    parser.add_argument("--frames", type=int, help="frames per clip (default: the config's data.num_frames, 4)")
    parser.add_argument("--size", type=int, default=128, help="frame height and width in pixels, a multiple of 32 "
                                                              "(default 128, the config's train scale)")
    parser.add_argument("--weights", type=Path,
                        help="a tiny weights folder (testing/tiny_weights.py layout; default: built in a temporary "
                             "folder)")
    parser.add_argument("--threads", type=int,
                        help="CPU intra-op threads (default: torch's default). On a CPU shared with other busy "
                             "processes, 1 gives steadier figures: a wider pool stalls on busy cores")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's random weights and of the clips")
    parser.add_argument("--dry_run", action="store_true",
                        help="a few seconds on any device: batch sizes 2 3, 2 timed steps without warm-up, 2 frames of "
                             "64x64 (replaces those flags); its figures only show that the script works")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    args = parser.parse_args(argv)
    if args.dry_run:
        vars(args).update(DRY_RUN)
    if min(args.batch_sizes) < 1 or args.steps < 1 or args.warmup < 0 or (args.threads or 1) < 1:
        parser.error("--batch_sizes, --steps and --threads must be at least 1, --warmup at least 0")
    if args.size < 32 or args.size % 32:
        parser.error("--size must be a positive multiple of 32 (data.size_divisibility)")
    if args.frames is not None and args.frames < 1:
        parser.error("--frames must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    return args


def make_step(model, criterion, optimizer, clip_max_norm: float, device: torch.device):
    """The training step of ``engine.train_one_epoch`` on one batch, without its logging and loss checks."""
    params = trainable_parameters(model)

    def step(batch) -> None:
        samples, captions, targets = batch
        samples, targets = samples.to(device, non_blocking=True), targets_to(targets, device)
        outputs = model(samples, captions, targets)
        total = sum(weighted_losses(criterion(to_float32(outputs), targets), criterion.weight_dict).values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, clip_max_norm)
        optimizer.step()

    return step


def timed_steps(step, batch, count: int, device: torch.device) -> list[float]:
    """Wall seconds of ``count`` steps, each between two device synchronisations."""
    return [timed(lambda: step(batch), device)[1] for _ in range(count)]


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by ``(start, end)`` intervals, overlaps counted once."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def profiled_step(step, batch, device: torch.device) -> dict:
    """``overhead_share`` and ``op_calls`` of one step under the profiler (see the module docstring)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as profiler:
        with record_function(STEP_EVENT):
            step(batch)
            synchronize(device)
    events = profiler.events()
    window = next(event.time_range for event in events if event.name == STEP_EVENT)
    if device.type == "cuda":
        busy = [event for event in events if event.device_type == DeviceType.CUDA]
    else:
        busy = [event for event in events if event.name.startswith("aten::")]
    intervals = [(max(e.time_range.start, window.start), min(e.time_range.end, window.end)) for e in busy]
    covered = union_length([(start, end) for start, end in intervals if end > start])
    return {"overhead_share": 1 - covered / window.elapsed_us(),
            "op_calls": sum(1 for event in events if event.name.startswith("aten::"))}


def measure(args) -> dict:
    """The figures of every batch size (see the module docstring)."""
    device = torch.device(args.device)
    cfg = load_config(TINY_CONFIG)
    frames = args.frames or cfg["data"]["num_frames"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or Path(tmp)
        if args.weights is None:
            build_tiny_weights(weights, seed=0)
        cfg["weights"] = str(weights)
        torch.manual_seed(args.seed)
        model, criterion = build_model(cfg, load_pretrained(weights))
    model, criterion = model.to(device).train(), criterion.to(device)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=cfg["train"]["lr"],
                                  weight_decay=cfg["train"]["weight_decay"])
    step = make_step(model, criterion, optimizer, cfg["train"]["clip_max_norm"], device)
    for batch_size in args.batch_sizes:
        batch = synthetic_clip(batch_size, frames, args.size, args.size, torch.device("cpu"), seed=args.seed)
        timed_steps(step, batch, args.warmup, device)
        seconds = timed_steps(step, batch, args.steps, device)
        step_s = statistics.median(seconds)
        results[str(batch_size)] = {"step_s": step_s, "clips_per_s": batch_size / step_s, "steps_s": seconds,
                                    **profiled_step(step, batch, device)}
    first = results[str(args.batch_sizes[0])]["step_s"]
    for row in results.values():
        row["step_vs_first"] = row["step_s"] / first
    return {"device": args.device, "frames": frames, "size": args.size, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "dry_run": args.dry_run, "batch_sizes": results}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = measure(args)
    print(f"tiny HCD training step on {summary['device']}, {summary['frames']} frames of {summary['size']}x"
          f"{summary['size']}, {summary['threads']} threads")
    print(f"{'batch':>5} {'step s':>8} {'clips/s':>8} {'vs first':>8} {'overhead':>8} {'aten calls':>10}")
    for batch_size, row in summary["batch_sizes"].items():
        print(f"{batch_size:>5} {row['step_s']:8.3f} {row['clips_per_s']:8.2f} {row['step_vs_first']:8.2f} "
              f"{row['overhead_share']:8.1%} {row['op_calls']:10d}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
