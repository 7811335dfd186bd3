"""`make demo`: the whole pipeline on the embedded default, from nothing, on the GPU when one is visible (else the CPU).

tiny offline weights -> RefShapes -> pretrain the tiny VAE on its frames -> train -> inference on RefShapes valid -> submission zip -> score ->
random-object baseline -> a GIF of a few predictions with their sentences. It prints a short table and writes
``<out>/metrics.json`` = {"J", "F", "JF", "by_kind": {kind: {"J", "F", "JF"}}, "baseline_JF", "baseline_by_kind",
"train_seconds", "total_seconds", "stage_seconds": {stage: s}, "options_beyond_paper": {key: value}}.

Every stage reuses what an earlier run left (weights, data, a finished training run), so running it again is
cheap; an interrupted training run resumes from its last checkpoint.
"""
import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import numpy as np
from PIL import Image

from datasets.ytvos import meta_expressions_path, read_meta_json
from inference.writers import mask_png_bytes
from metrics.tables import demo_table
from util.cli import add_device_argument, resolve_device
from util.config import get_key, load_config
from util.visualisation import mask_color, overlay_frame

GIF_SCALE = 2
# The settings that the demo may change beyond the paper (docs/architecture.md, "Beyond the paper"); their paper
# values are those of the paper's configuration.
BEYOND_PAPER_KEYS = ("model.vl_fusion", "model.pixel_referring", "model.text_alignment", "model.sentence_queries",
                     "model.object_referring", "data.sentences_per_clip")
PAPER_CONFIG = REPO / "configs" / "ytvos_hcd.yaml"


class StageClock:
    """Wall seconds of each demo stage, in order: ``done(name)`` closes the stage that ran since the last call."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.time()

    def done(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(now - self._last, 1)
        self._last = now


def options_beyond_paper(config_path: Path) -> dict:
    """The settings of the trained run that the paper's model does not have (docs/architecture.md)."""
    cfg, paper = load_config(config_path), load_config(PAPER_CONFIG)
    used = {key: get_key(cfg, key) for key in BEYOND_PAPER_KEYS}
    return {key: value for key, value in used.items() if value != get_key(paper, key)}


def run(command: list[str]) -> str:
    """Run a project entry point with this interpreter, from the repository root (where ``-m scripts.<name>``
    resolves); return its stdout, stop the demo if it fails."""
    shown = " ".join(["python", *command[1:]])
    print("$", shown, flush=True)
    result = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"demo: `{shown}` failed with exit code {result.returncode}")
    return result.stdout


def last_json(output: str) -> dict:
    """The JSON object on the last line of an entry point's output."""
    return json.loads(output.strip().splitlines()[-1])


def write_random_object_baseline(data_root: Path, split: str, out: Path, seed: int) -> None:
    """Predict, for every expression, a uniformly random object of its video (the ground-truth mask of it)."""
    rng = random.Random(seed)
    meta = read_meta_json(meta_expressions_path(data_root, split))
    for video, entry in meta.items():
        object_ids = sorted({int(e["obj_id"]) for e in entry["expressions"].values()})
        for exp_id in entry["expressions"]:
            guess = rng.choice(object_ids)
            folder = out / "Annotations" / video / exp_id
            folder.mkdir(parents=True, exist_ok=True)
            for frame in entry["frames"]:
                labels = np.asarray(Image.open(data_root / split / "Annotations" / video / f"{frame}.png"))
                (folder / f"{frame}.png").write_bytes(mask_png_bytes(labels == guess))


def write_gif(data_root: Path, pred_root: Path, out_path: Path, num_examples: int, seed: int) -> None:
    """A GIF of a few predicted expressions (one motion-only among them when there is one) with their sentences."""
    meta = read_meta_json(meta_expressions_path(data_root, "valid"))
    items = [(video, exp_id, e) for video, entry in sorted(meta.items()) for exp_id, e in entry["expressions"].items()]
    rng = random.Random(seed)
    motion = [index for index, item in enumerate(items) if item[2].get("kind") == "motion"]
    first = rng.sample(motion, 1) if motion else []
    others = rng.sample([index for index in range(len(items)) if index not in first], num_examples - len(first))
    chosen = [items[index] for index in first + others]
    frames_out = []
    num_frames = min(len(meta[video]["frames"]) for video, _, _ in chosen)
    for t in range(num_frames):
        panels = []
        for index, (video, exp_id, expression) in enumerate(chosen):
            frame = meta[video]["frames"][t]
            image = Image.open(data_root / "valid" / "JPEGImages" / video / f"{frame}.jpg").convert("RGB")
            mask = Image.open(pred_root / "Annotations" / video / exp_id / f"{frame}.png")
            size = (image.width * GIF_SCALE, image.height * GIF_SCALE)  # room for a readable caption
            panels.append(overlay_frame(np.asarray(image.resize(size)), np.asarray(mask.resize(size)) > 0,
                                        expression["exp"], mask_color(index)))
        frames_out.append(np.concatenate(panels, axis=1))
    images = [Image.fromarray(frame) for frame in frames_out]
    images[0].save(out_path, save_all=True, append_images=images[1:], duration=250, loop=0)


def run_mevis(python: str, args: argparse.Namespace, out: Path, weights: Path) -> dict:
    """RefShapes in the MeViS layout: generate (reused), train, infer valid_u, score; {"J", "F", "JF", "expressions"}."""
    data_root = REPO / f"{args.data_root}_mevis"
    if not (data_root / "valid_u").is_dir():
        run([python, "-m", "scripts.make_refshapes", "--out", str(data_root), "--videos", str(args.videos),
             "--valid_videos", str(args.valid_videos), "--seed", str(args.seed), "--format", "mevis"])
    train_dir = out / "mevis_train"
    train = [python, "main.py", "--max_steps", str(args.mevis_steps), "--device", args.device]
    if (train_dir / "last.pth").is_file():
        run(train + ["--resume", str(train_dir / "last.pth")])
    else:
        run(train + ["--config", "configs/refshapes_mevis_tiny.yaml", "--data_root", str(data_root),
                     "--weights", str(weights), "--output_dir", str(train_dir)])
    predictions = out / "mevis_valid_u"
    shutil.rmtree(predictions, ignore_errors=True)
    run([python, "inference_mevis.py", "--checkpoint", str(train_dir / "last.pth"), "--weights", str(weights),
         "--data_root", str(data_root), "--split", "valid_u", "--output_dir", str(predictions),
         "--device", args.device])
    scores = last_json(run([python, "inference_mevis.py", "--score", "--pred_dir", str(predictions),
                            "--gt_root", str(data_root), "--split", "valid_u"]))
    return {key: scores[key] for key in ("J", "F", "JF", "expressions")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="folder for the run, predictions and metrics.json")
    parser.add_argument("--config", default="configs/refshapes_tiny.yaml", help="training config")
    parser.add_argument("--data_root", default="data/refshapes", help="where RefShapes is generated (reused)")
    parser.add_argument("--weights", default="weight_tiny", help="where the tiny weights are written (reused)")
    parser.add_argument("--videos", type=int, default=200, help="RefShapes training videos")
    parser.add_argument("--valid_videos", type=int, default=40, help="RefShapes valid videos (scored)")
    parser.add_argument("--max_steps", type=int, default=1500, help="optimizer steps of the training run")
    parser.add_argument("--vae_steps", type=int, default=300, help="pretraining steps of the tiny VAE")
    add_device_argument(parser, "the demo trains and infers")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the baseline and the GIF's choice")
    parser.add_argument("--mevis_steps", type=int, default=0,
                        help="also train this many steps on RefShapes in the MeViS layout (multi-object expressions; "
                             "configs/refshapes_mevis_tiny.yaml), infer valid_u and score it like MeViS's server "
                             "(metrics.json key 'mevis'); 0 skips it")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags; ``--device`` left out is the GPU when one is visible."""
    args = build_parser().parse_args(argv)
    args.device = resolve_device(args.device)
    return args


def main() -> None:
    args = parse_args()
    out, data_root, weights = REPO / args.out, REPO / args.data_root, REPO / args.weights
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    started = time.time()
    stages = StageClock()

    if not (weights / "unet").is_dir():
        run([python, "-m", "scripts.make_tiny_weights", "--out", str(weights)])
    stages.done("tiny_weights")
    if not (data_root / "meta_expressions").is_dir():
        run([python, "-m", "scripts.make_refshapes", "--out", str(data_root), "--videos", str(args.videos),
             "--valid_videos", str(args.valid_videos), "--seed", str(args.seed)])
    stages.done("refshapes")

    # The tiny components are random; a real VAE is a trained autoencoder, and the features downstream need one.
    run([python, "-m", "scripts.pretrain_tiny_vae", "--weights", str(weights), "--data_root", str(data_root),
         "--steps", str(args.vae_steps), "--seed", str(args.seed)])
    stages.done("vae_pretraining")

    train_dir = out / "train"
    train = [python, "main.py", "--max_steps", str(args.max_steps), "--device", args.device]
    if (train_dir / "last.pth").is_file():
        run(train + ["--resume", str(train_dir / "last.pth")])
    else:
        run(train + ["--config", args.config, "--data_root", str(data_root), "--weights", str(weights),
                     "--output_dir", str(train_dir)])
    trained = time.time()
    stages.done("training")

    predictions = out / "valid"
    shutil.rmtree(predictions, ignore_errors=True)
    run([python, "inference_ytvos.py", "--checkpoint", str(train_dir / "last.pth"), "--weights", str(weights),
         "--data_root", str(data_root), "--split", "valid", "--output_dir", str(predictions),
         "--device", args.device])
    stages.done("inference")
    scores = last_json(run([python, "inference_ytvos.py", "--score", "--pred_dir", str(predictions),
                            "--gt_root", str(data_root), "--split", "valid"]))
    stages.done("scoring")

    baseline_dir = out / "baseline_random_object"
    shutil.rmtree(baseline_dir, ignore_errors=True)
    write_random_object_baseline(data_root, "valid", baseline_dir, args.seed)
    baseline = last_json(run([python, "inference_ytvos.py", "--score", "--pred_dir", str(baseline_dir),
                              "--gt_root", str(data_root), "--split", "valid"]))
    stages.done("baseline")
    write_gif(data_root, predictions, out / "predictions.gif", num_examples=4, seed=args.seed)
    stages.done("gif")

    mevis = run_mevis(python, args, out, weights) if args.mevis_steps > 0 else None
    if mevis is not None:
        stages.done("mevis")

    metrics = {
        "J": scores["J"],
        "F": scores["F"],
        "JF": scores["JF"],
        "by_kind": {k: {m: v[m] for m in ("J", "F", "JF")} for k, v in scores["by_kind"].items()},
        "baseline_JF": baseline["JF"],
        "baseline_by_kind": {k: v["JF"] for k, v in baseline["by_kind"].items()},
        "train_seconds": round(trained - started, 1),
        "total_seconds": round(time.time() - started, 1),
        "stage_seconds": stages.seconds,
        "options_beyond_paper": options_beyond_paper(train_dir / "config.yaml"),
    }
    if mevis is not None:
        metrics["mevis"] = mevis
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print("\n" + demo_table(metrics))
    print(f"\nmetrics: {out / 'metrics.json'}   predictions: {out / 'predictions.gif'}   "
          f"submission: {predictions / 'submission.zip'}   ({metrics['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
