"""Shared multi-expression inference against a naive per-sentence loop, and how inference scales with clip length.

On the tiny model (``configs/refshapes_tiny.yaml``, tiny weights built in a temporary folder) and one RefShapes
video (generated in a temporary folder), this benchmark

1. runs ``Predictor.probabilities`` once with K sentences (the shared path: the backbone encodes the clip once,
   VAE latents, CLIP image tokens and the UNet and TCMR stems, and serves all K captions, ``--captions_per_pass``
   of them per pass through the caption-dependent part) and K times with one sentence each (the naive
   loop, which re-encodes the clip for every sentence); checks that both give the same probabilities, counts how
   often each per-clip stage ran, splits the time between the caption-independent frozen encoding and the rest,
   and prints the speed ratio (target >= 1.6x: only the caption-independent work can be shared);
2. measures frames/s and peak memory of the shared path for several clip lengths T, each in a fresh
   subprocess (on the CPU the peak resident set, ``VmHWM``, reset through ``/proc/self/clear_refs`` after loading
   the model and a 2-frame warm-up, minus the resident set then; on CUDA ``torch.cuda.max_memory_allocated``
   minus the memory allocated then), and fits time and memory linearly in T.

Timings are taken with ``--threads`` intra-op threads (1 by default: the least disturbed by other processes on a
shared machine); the ratio is taken on process CPU time, which other processes disturb far less than wall time
(both are printed); frames/s is taken on the smallest CPU time of ``--repeat`` runs on the CPU (with one thread,
what an idle machine's wall clock would show) and on the smallest wall time on CUDA.

    python -m benchmarks.bench_inference                 # 16 frames of 128x128, 4 sentences; T = 5 10 20 36
    python -m benchmarks.bench_inference --json          # last line: {"speedup_shared_vs_naive": ..., ...}
"""
import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

from benchmarks.timing import timed
from datasets.refshapes import generate_refshapes
from inference.predictor import Predictor
from models import build_model
from models.pretrained import load_pretrained
from testing.tiny_weights import build_tiny_weights
from util.config import load_config

CONFIG = REPO / "configs" / "refshapes_tiny.yaml"
AGREEMENT_TOLERANCE = 1e-4  # shared and naive batch the captions differently: float rounding only
TARGET_SPEEDUP = 1.6  # issue 16; the structural cap of sharing is ~1.7x on this model (benchmarks/README.md)


def write_video(root: Path, num_frames: int, size: int) -> Path:
    """One RefShapes training video of ``num_frames`` frames of ``size``×``size`` -> its folder under ``root``."""
    generate_refshapes(root, num_videos=1, num_valid_videos=0, num_frames=num_frames, size=size, seed=0)
    return next((root / "train" / "JPEGImages").iterdir())


def read_video(folder: Path, num_frames: int, num_sentences: int) -> tuple[np.ndarray, list[str]]:
    """The first ``num_frames`` frames (uint8 [T, H, W, 3]) and ``num_sentences`` expressions of a RefShapes video."""
    meta = json.loads((folder.parents[2] / "meta_expressions" / "train" / "meta_expressions.json").read_text())
    expressions = [e["exp"] for e in meta["videos"][folder.name]["expressions"].values()]
    if len(expressions) < num_sentences:
        raise ValueError(f"video {folder.name} has {len(expressions)} expressions, fewer than --sentences "
                         f"{num_sentences}")
    frames = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("*.jpg"))[:num_frames]]
    return np.stack(frames), expressions[:num_sentences]


def build_predictor(weights: Path, size: int, device: torch.device, captions_per_pass: int | None) -> Predictor:
    """The tiny HCD (seeded random trainable weights) at test size ``size``."""
    cfg = load_config(CONFIG)
    cfg["weights"] = str(weights)
    cfg["data"]["test_size"] = cfg["data"]["max_size"] = size
    torch.manual_seed(0)
    model, _ = build_model(cfg, load_pretrained(weights))
    return Predictor(model, cfg, device, captions_per_pass=captions_per_pass)


class StageMeter:
    """Counts calls and wall time of the per-clip stages of a predictor's model while it runs.

    ``encode``: ``backbone.encode_frames`` (frozen VAE + CLIP vision, caption-independent); ``unet``, ``stem``:
    the UNet feature extractor and the TCMR temporal stem (forward hooks).
    """

    def __init__(self, model: torch.nn.Module):
        self.calls = dict.fromkeys(("encode", "unet", "stem"), 0)
        self.seconds = dict.fromkeys(self.calls, 0.0)
        backbone = model.backbone
        encode_frames = backbone.encode_frames

        def timed_encode(*args, **kwargs):
            start = time.perf_counter()
            encoding = encode_frames(*args, **kwargs)
            self._add("encode", time.perf_counter() - start)
            return encoding

        backbone.encode_frames = timed_encode  # instance attribute: the benchmark's model only
        for name, module in (("unet", backbone.unet_features), ("stem", backbone.temporal_stem)):
            starts = []
            module.register_forward_pre_hook(lambda *_, starts=starts: starts.append(time.perf_counter()))
            module.register_forward_hook(
                lambda *_, name=name, starts=starts: self._add(name, time.perf_counter() - starts.pop()))

    def _add(self, name: str, seconds: float) -> None:
        self.calls[name] += 1
        self.seconds[name] += seconds

    def reset(self) -> None:
        self.calls = dict.fromkeys(self.calls, 0)
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def compare(predictor: Predictor, video: np.ndarray, sentences: list[str], repeat: int) -> dict:
    """Shared (one call, K sentences) against naive (K calls, one sentence each), interleaved ``repeat`` times."""
    meter = StageMeter(predictor.model)
    predictor.probabilities(video[:2], sentences[:1])  # first-call costs (allocator, kernels)
    runs = {"shared": [], "naive": []}
    stages = {}
    for _ in range(repeat):
        for name, fn in (("shared", lambda: predictor.probabilities(video, sentences)),
                         ("naive", lambda: np.stack([predictor.probabilities(video, [s])[0] for s in sentences]))):
            meter.reset()
            probabilities, cpu, wall = timed(fn)
            runs[name].append((probabilities, cpu, wall))
            stages[name] = {"calls": dict(meter.calls), "seconds": dict(meter.seconds), "wall": wall}
    shared, naive = runs["shared"][-1][0], runs["naive"][-1][0]
    cpu = {name: statistics.median(run[1] for run in values) for name, values in runs.items()}
    wall = {name: min(run[2] for run in values) for name, values in runs.items()}
    return {"max_abs_diff": float(np.abs(shared - naive).max()), "cpu": cpu, "wall": wall, "stages": stages}


def process_memory_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}; the CPU memory measurement needs Linux")


def reset_peak_memory(device: torch.device) -> float:
    """Start a new peak-memory window; returns the memory in use now (MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2 ** 20
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident set (VmHWM) to the current one
    return process_memory_mb("VmRSS")


def peak_memory(device: torch.device) -> float:
    """Peak memory (MiB) since ``reset_peak_memory``: CUDA allocator peak, or the peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return process_memory_mb("VmHWM")


def scaling_child(args: argparse.Namespace) -> None:
    """One clip length in this (fresh) process: print {"frames", "cpu_s", "wall_s", "peak_mem_mb"} as JSON."""
    device = torch.device(args.device)
    predictor = build_predictor(args.weights, args.size, device, args.captions_per_pass)
    video, sentences = read_video(args.video_dir, args.child_frames, args.sentences)
    predictor.probabilities(video[:2], sentences)
    in_use = reset_peak_memory(device)
    runs = [timed(lambda: predictor.probabilities(video, sentences))[1:] for _ in range(args.repeat)]
    print(json.dumps({"frames": args.child_frames, "cpu_s": min(cpu for cpu, _ in runs),
                      "wall_s": min(wall for _, wall in runs), "peak_mem_mb": peak_memory(device) - in_use}))


def run_child(args: argparse.Namespace, num_frames: int, weights: Path, video_dir: Path) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_inference", "--child_frames", str(num_frames),
               "--weights", str(weights), "--video_dir", str(video_dir), "--size", str(args.size),
               "--sentences", str(args.sentences),
               "--repeat", str(args.repeat), "--threads", str(args.threads), "--device", args.device,
               "--captions_per_pass", str(args.captions_per_pass)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the scaling run for T={num_frames} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def linear_fit(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """Least-squares ``y = slope·x + intercept`` -> (slope, intercept, R²)."""
    slope, intercept = np.polyfit(x, y, 1)
    residual = np.asarray(y) - (slope * np.asarray(x) + intercept)
    total = np.sum((np.asarray(y) - np.mean(y)) ** 2)
    return float(slope), float(intercept), float(1 - np.sum(residual ** 2) / total) if total > 0 else 1.0


def print_comparison(args, sentences: list[str], result: dict) -> float:
    cpu, wall, stages = result["cpu"], result["wall"], result["stages"]
    speedup = cpu["naive"] / cpu["shared"]
    print(f"{args.frames} frames of {args.size}x{args.size}, {len(sentences)} sentences, {args.threads} thread(s), "
          f"{args.device}, {args.repeat} repeat(s)")
    print("                                     CPU s (median)   wall s (best)   encode_frames  UNet  stem")
    for name, label in (("naive", f"naive loop ({len(sentences)} calls x 1 sentence)"),
                        ("shared", f"shared (1 call, {len(sentences)} sent., {args.captions_per_pass}/pass)")):
        calls = stages[name]["calls"]
        print(f"{label:<37}{cpu[name]:10.2f}{wall[name]:17.2f}{calls['encode']:14d}{calls['unet']:6d}"
              f"{calls['stem']:6d}")
    print(f"speed-up shared vs naive: x{speedup:.2f} (CPU), x{wall['naive'] / wall['shared']:.2f} (wall); "
          f"target >= x{TARGET_SPEEDUP} {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}")
    print(f"max |shared - naive| probability = {result['max_abs_diff']:.3g}")
    for name in ("naive", "shared"):
        seconds, total = stages[name]["seconds"], stages[name]["wall"]
        print(f"where the wall time of one {name} run goes: VAE + CLIP vision (encode_frames) "
              f"{seconds['encode'] / total:5.1%}, UNet {seconds['unet'] / total:5.1%}, TCMR stem "
              f"{seconds['stem'] / total:5.1%}, the rest (text, transformer, heads, pre/post-processing) "
              f"{1 - (seconds['encode'] + seconds['unet'] + seconds['stem']) / total:5.1%}")
    return speedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16, help="frames of the shared-vs-naive video (default 16)")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels, also the test size (default 128)")
    parser.add_argument("--sentences", type=int, default=4, help="sentences K per video (default 4, at most 7)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[5, 10, 20, 36],
                        help="clip lengths T of the scaling table, one fresh subprocess each (default 5 10 20 36)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--captions_per_pass", type=int, default=2, metavar="C",
                        help="sentences per pass through the caption-dependent part in the shared path "
                             "(Predictor's captions_per_pass; the frames are encoded once either way; default 2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    parser.add_argument("--child_frames", type=int, help="internal: measure one clip length T in this process")
    parser.add_argument("--weights", type=Path, help="internal (with --child_frames): the tiny weights folder")
    parser.add_argument("--video_dir", type=Path, help="internal (with --child_frames): the RefShapes video folder")
    args = parser.parse_args()
    if args.repeat < 1 or args.frames < 2 or args.threads < 1 or args.captions_per_pass < 1:
        parser.error("--repeat, --threads and --captions_per_pass must be >= 1 and --frames >= 2")
    torch.set_num_threads(args.threads)
    if args.child_frames is not None:
        scaling_child(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        build_tiny_weights(weights, seed=0)
        video_dir = write_video(Path(tmp) / "refshapes", max(args.frames, *args.lengths), args.size)
        video, sentences = read_video(video_dir, args.frames, args.sentences)
        predictor = build_predictor(weights, args.size, torch.device(args.device), args.captions_per_pass)
        result = compare(predictor, video, sentences, args.repeat)
        speedup = print_comparison(args, sentences, result)
        del predictor
        scaling = [run_child(args, num_frames, weights, video_dir) for num_frames in args.lengths]

    lengths = [row["frames"] for row in scaling]
    clock = "wall_s" if args.device == "cuda" else "cpu_s"
    seconds_per_frame, seconds_fixed, time_r2 = linear_fit(lengths, [row[clock] for row in scaling])
    mb_per_frame, mb_fixed, mem_r2 = linear_fit(lengths, [row["peak_mem_mb"] for row in scaling])
    memory_kind = "CUDA allocator peak" if args.device == "cuda" else "peak RSS above the loaded model"
    print(f"\nscaling of the shared path ({len(sentences)} sentences, {args.size}x{args.size}, fresh process per T; "
          f"frames/s on {clock[:-2]} time)")
    print(f"    T     CPU s    wall s   frames/s   peak MB ({memory_kind})")
    for row in scaling:
        print(f"{row['frames']:5d}{row['cpu_s']:10.2f}{row['wall_s']:10.2f}{row['frames'] / row[clock]:11.2f}"
              f"{row['peak_mem_mb']:10.1f}")
    print(f"fit: time = {seconds_fixed:.3f} s + {seconds_per_frame:.3f} s/frame x T (R² {time_r2:.4f}); "
          f"memory = {mb_fixed:.1f} MB + {mb_per_frame:.2f} MB/frame x T (R² {mem_r2:.4f})")
    if result["max_abs_diff"] > AGREEMENT_TOLERANCE:
        raise SystemExit(f"shared and naive inference disagree by {result['max_abs_diff']:.3g} "
                         f"(> {AGREEMENT_TOLERANCE})")
    if args.json:
        print(json.dumps({
            "speedup_shared_vs_naive": speedup,
            "speedup_shared_vs_naive_wall": result["wall"]["naive"] / result["wall"]["shared"],
            "max_abs_diff": result["max_abs_diff"],
            "shared_cpu_s": result["cpu"]["shared"],
            "naive_cpu_s": result["cpu"]["naive"],
            "encode_frames_calls": {name: stage["calls"]["encode"] for name, stage in result["stages"].items()},
            "fps": {row["frames"]: row["frames"] / row[clock] for row in scaling},
            "peak_mem_mb": {row["frames"]: row["peak_mem_mb"] for row in scaling},
            "seconds_per_frame": seconds_per_frame,
            "mb_per_frame": mb_per_frame,
            "time_fit_r2": time_r2,
            "memory_fit_r2": mem_r2,
            "frames": args.frames, "size": args.size, "sentences": len(sentences), "threads": args.threads,
            "captions_per_pass": args.captions_per_pass,
            "device": args.device,
        }))


if __name__ == "__main__":
    main()
