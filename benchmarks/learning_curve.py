"""Learning curve of one training recipe on RefShapes (issue 20): valid referring quality against samples seen.

A recipe is a config plus ``--set`` overrides. One ``main.py`` run trains it in stages, resuming its checkpoint,
and after each stage (at each of ``--samples``) the checkpoint is scored on the valid split:

- ``selected_J``, ``best_slot_J``, ``random_object_J``: J of the slot the model selects, of the best of its slots
  and of a random object of the video (its expectation), and the spread of the slots' scores between the sentences
  of a video and between the slots of a sentence, as the probe ladder's end result (``benchmarks/probe_referring.py``:
  every slot refined, one forward pass per video with all its sentences);
- ``J``, ``F``, ``JF`` overall and ``by_kind``: the selected slot's masks written as a prediction tree and scored by
  ``metrics.ytvos.score_predictions``, the scorer of ``inference_ytvos.py --score``;
- once per run, ``baseline``: J&F overall and by kind of a random object per expression
  (``scripts.run_demo.write_random_object_baseline``, the demo's baseline).

A sample is one (clip, sentence) pair: ``samples = steps x train.batch_size x data.sentences_per_clip``; each point
also records the steps, the clips, the training wall seconds so far and the mean seconds per step from the run's
``log.jsonl``. ``<out>/curve.json`` is rewritten after every point; running the same command again resumes: points
already in it are kept, and the training continues from its last checkpoint.

    python -m benchmarks.learning_curve --data_root data/rs_1k --weights weight_tiny --out runs/curves/demo \\
        --samples 500 1000 2000 4000 --json
    python -m benchmarks.learning_curve ... --name k3_fusion --set data.sentences_per_clip=3 --set model.vl_fusion=true
"""
import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.probe_referring import VideoProbe, end_jaccards, end_summary, read_video, score_spreads, slot_masks
from datasets.ytvos import exp_id_order, read_meta_expressions
from inference.predictor import Predictor, check_sentences
from inference.writers import mask_png_bytes
from metrics.ytvos import score_predictions
from models.hcd import best_query
from scripts.run_demo import write_random_object_baseline
from util.cli import add_device_argument, exit_on_user_error, resolve_device
from util.config import apply_overrides, get_key, load_config
from util.checkpoint import load_checkpoint
from util.cpu_threads import ThreadGovernor
from util.errors import UserInputError
from util.nested_tensor import nested_tensor_from_videos

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "refshapes_tiny.yaml"
SPLIT = "valid"


def steps_for(samples: int, samples_per_step: int) -> int:
    """Optimizer steps that see at least ``samples`` samples."""
    return math.ceil(samples / samples_per_step)


def mean_step_seconds(log_path: Path, after_step: int) -> float | None:
    """Mean seconds per optimizer step of the records of ``log.jsonl`` after ``after_step`` (weighted by the steps
    each record's window covers), or None when there are none."""
    if not log_path.is_file():
        return None
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    total, steps, previous = 0.0, 0, after_step
    for record in records:
        if record["step"] > after_step:
            window = record["step"] - previous
            total, steps, previous = total + record["time"] * window, steps + window, record["step"]
    return total / steps if steps else None


@torch.inference_mode()
def evaluate_video(predictor: Predictor, root: Path, video: str, entry: dict, out: Path) -> VideoProbe:
    """One forward pass over a valid video with all its sentences and every slot refined: write the selected slot's
    masks under ``out/<video>/<exp_id>/`` and return its J values and score spreads (``jaccards``, ``score_std``)."""
    frames, ids = read_video(root, SPLIT, video, entry["frames"])
    exp_ids = sorted(entry["expressions"], key=exp_id_order)
    captions = check_sentences([entry["expressions"][e]["exp"] for e in exp_ids])
    clip, _ = predictor.transforms(frames, {}, random.Random(0))  # [T, 3, h, w]; the test transforms draw nothing
    samples = nested_tensor_from_videos([clip], predictor.size_divisibility).to(predictor.device)
    outputs = predictor.model(samples, captions, refine_all_queries=True)
    predicted = slot_masks(outputs, ids.shape[1:], tuple(clip.shape[-2:]), predictor.threshold)  # [K, T, Q, H, W]
    selected = best_query(outputs["pred_logits"]).tolist()
    for k, exp_id in enumerate(exp_ids):
        folder = out / video / exp_id
        folder.mkdir(parents=True, exist_ok=True)
        for frame, mask in zip(entry["frames"], predicted[k, :, selected[k]]):
            (folder / f"{frame}.png").write_bytes(mask_png_bytes(mask))
    targets = [int(entry["expressions"][e]["obj_id"]) for e in exp_ids]
    return VideoProbe(objects=[], sentences=[], jaccards=end_jaccards(predicted, selected, ids, targets),
                      score_std=score_spreads(outputs["pred_logits"]))


def evaluate(predictor: Predictor, data_root: Path, out: Path, governor: ThreadGovernor) -> dict:
    """Score a model on the valid split: ``end_summary``'s keys plus J, F, JF and by_kind ({kind: {J, F, JF, count}})
    of the selected masks, written (and replaced) under ``out``; ``governor`` (the curve's one) sizes the thread
    pool between videos."""
    shutil.rmtree(out, ignore_errors=True)
    videos = read_meta_expressions(data_root, SPLIT)
    probes = []
    for video in sorted(videos):
        governor.update()
        probes.append(evaluate_video(predictor, data_root, video, videos[video], out / "Annotations"))
    scores = score_predictions(out, data_root, SPLIT)
    return {**end_summary(probes), "J": scores["J"], "F": scores["F"], "JF": scores["JF"],
            "by_kind": scores["by_kind"]}


def random_object_baseline(data_root: Path, out: Path, seed: int) -> dict:
    """J&F overall and by kind of a random object per expression: {"JF", "by_kind": {kind: JF}}."""
    shutil.rmtree(out, ignore_errors=True)
    write_random_object_baseline(data_root, SPLIT, out, seed)
    scores = score_predictions(out, data_root, SPLIT)
    shutil.rmtree(out)
    return {"JF": scores["JF"], "by_kind": {kind: value["JF"] for kind, value in scores["by_kind"].items()}}


def train_to(args: argparse.Namespace, train_dir: Path, steps: int) -> None:
    """Train the recipe to ``steps`` optimizer steps in all: a new ``main.py`` run, or a resumed one."""
    command = [sys.executable, "main.py", "--max_steps", str(steps), "--device", args.device]
    if (train_dir / "last.pth").is_file():
        command += ["--resume", str(train_dir / "last.pth")]
    else:
        command += ["--config", str(args.config), "--data_root", str(args.data_root), "--weights", str(args.weights),
                    "--output_dir", str(train_dir), "--seed", str(args.seed)]
        command += [item for override in args.set for item in ("--set", override)]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def recipe(args: argparse.Namespace) -> dict:
    """What the curve is of: the command's recipe, and the samples one optimizer step sees."""
    cfg = apply_overrides(load_config(args.config), argparse.Namespace(set=args.set))
    batch, per_clip = get_key(cfg, "train.batch_size"), get_key(cfg, "data.sentences_per_clip")
    return {"name": args.name or args.out.name, "config": str(args.config), "overrides": list(args.set),
            "data_root": str(args.data_root), "weights": str(args.weights), "seed": args.seed,
            "batch_size": batch, "sentences_per_clip": per_clip, "samples_per_step": batch * per_clip}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", type=Path, required=True,
                        help="RefShapes in the Ref-YouTube-VOS layout (train to train on, valid with ground truth to "
                             "score)")
    parser.add_argument("--weights", type=Path, required=True, help="the pretrained components' folder")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder of the run: train/ (main.py's output), valid/ (the last predictions), curve.json")
    parser.add_argument("--samples", type=int, nargs="+", required=True,
                        help="the (clip, sentence) samples seen at which to score, ascending")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the recipe's config (default "
                                                                    "configs/refshapes_tiny.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override of the recipe, passed to main.py; repeatable")
    parser.add_argument("--name", default=None, help="the recipe's name in curve.json and plots (default: --out's "
                                                     "folder name)")
    parser.add_argument("--seed", type=int, default=0, help="main.py's seed and the random baseline's (default 0)")
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print curve.json as one line at the end")
    args = parser.parse_args(argv)
    if args.samples != sorted(set(args.samples)) or args.samples[0] < 1:
        parser.error(f"--samples must be positive and strictly ascending, got {args.samples}")
    args.device = resolve_device(args.device)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    curve_path, train_dir = args.out / "curve.json", args.out / "train"
    curve = json.loads(curve_path.read_text()) if curve_path.is_file() else {}
    curve.update(recipe(args))
    if "baseline" not in curve:
        curve["baseline"] = random_object_baseline(args.data_root, args.out / "baseline", args.seed)
    points = {point["samples"]: point for point in curve.get("points", [])}
    train_seconds = max((point["train_seconds"] for point in points.values()), default=0.0)
    done_steps = max((point["steps"] for point in points.values()), default=0)
    trained_steps = load_checkpoint(train_dir / "last.pth")["step"] if (train_dir / "last.pth").is_file() else 0
    governor = ThreadGovernor()  # one for the curve: each one's ceiling is the pool its predecessor left
    for samples in args.samples:
        if samples in points:
            continue
        steps = steps_for(samples, curve["samples_per_step"])
        if steps < trained_steps:
            raise UserInputError(f"{samples} samples ({steps} steps) lie before the run's checkpoint "
                                 f"{train_dir / 'last.pth'} (step {trained_steps}): the run cannot go back; score "
                                 f"them with another --out")
        started = time.time()
        train_to(args, train_dir, steps)
        train_seconds += time.time() - started
        started = time.time()
        predictor = Predictor.from_checkpoint(train_dir / "last.pth", args.weights, device=args.device)
        scores = evaluate(predictor, args.data_root, args.out / "valid", governor)
        points[samples] = {"samples": samples, "steps": steps, "clips": steps * curve["batch_size"],
                           "train_seconds": round(train_seconds, 1),
                           "step_seconds": mean_step_seconds(train_dir / "log.jsonl", done_steps),
                           "eval_seconds": round(time.time() - started, 1), **scores}
        done_steps = trained_steps = steps
        curve["points"] = [points[key] for key in sorted(points)]
        curve_path.write_text(json.dumps(curve, indent=1) + "\n")
        print(f"{samples} samples ({steps} steps): selected J {scores['selected_J']:.3f}, best-slot J "
              f"{scores['best_slot_J']:.3f}, J&F {scores['JF']:.3f} (random object {curve['baseline']['JF']:.3f})",
              flush=True)
    if args.json:
        print(json.dumps(curve))


if __name__ == "__main__":
    exit_on_user_error(main)
