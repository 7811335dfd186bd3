"""Speed and agreement of the MeViS scorer (metrics/mevis.py) against a loop of the official eval_mevis.py.

Builds a synthetic valid_u-like split on disk (irregular objects of 0.5-8 % of the frame moving across it and
sometimes out of it, some frames empty, expressions of one to three objects, perturbed predictions as 0/255 PNGs),
then scores it twice from the same files: with the official per-expression algorithm, one frame at a time and in
one process (``testing/mevis_reference_loop.py``; the official script spreads the same work over 64 processes), and
with ``metrics.mevis.score_mevis``. Both read the jsons and the PNGs. It checks that every per-expression J and
F agrees and prints the speed ratio.

OpenCV runs single-threaded on both sides, and the ratio is taken on process CPU time, which a busy shared machine
disturbs far less than wall time (both are printed).

    python -m benchmarks.bench_mevis_eval            # 4 videos x 30 frames x 480x854, 4 objects, 6 expressions
    python -m benchmarks.bench_mevis_eval --json     # last line: {"speedup_vs_loop": ..., "max_abs_diff": ..., ...}
"""
import argparse
import json
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np


from benchmarks.timing import timed
from metrics.mevis import score_mevis
from testing.mevis_reference_loop import evaluate_mevis_loop
from testing.mevis_tree import object_masks, perturbed, write_predictions, write_split


def synthetic_split(rng: np.random.Generator, root: Path, pred_dir: Path, args: argparse.Namespace) -> None:
    """Write ``root/valid_u`` (meta_expressions.json, mask_dict.json) and the predictions under ``pred_dir``."""
    videos, anno_id = {}, 0
    for index in range(args.videos):
        objects = {}
        for _ in range(args.objects):
            objects[anno_id] = object_masks(rng, args.frames, args.height, args.width,
                                            float(rng.uniform(0.005, 0.08)),
                                            empty_frames=int(rng.integers(0, args.frames // 4 + 1)))
            anno_id += 1
        ids = list(objects)
        expressions = {}
        for exp_id in range(args.expressions):
            size = int(rng.integers(1, min(3, len(ids)) + 1))
            expressions[str(exp_id)] = ("an expression", [int(a) for a in rng.choice(ids, size, replace=False)])
        videos[f"video{index:02d}"] = {"objects": objects, "expressions": expressions}
        for exp_id, (_, anno_ids) in expressions.items():
            union = np.logical_or.reduce([objects[a] for a in anno_ids])
            write_predictions(pred_dir, f"video{index:02d}", exp_id, perturbed(rng, union))
    write_split(root, "valid_u", videos, frames=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4, help="number of synthetic videos (default 4)")
    parser.add_argument("--frames", type=int, default=30, help="frames per video (default 30)")
    parser.add_argument("--height", type=int, default=480, help="frame height (default 480)")
    parser.add_argument("--width", type=int, default=854, help="frame width (default 854)")
    parser.add_argument("--objects", type=int, default=4, help="objects (anno ids) per video (default 4)")
    parser.add_argument("--expressions", type=int, default=6,
                        help="expressions per video, each about 1 to 3 of its objects (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic set (default 0)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root, pred_dir = Path(tmp) / "mevis", Path(tmp) / "pred"
        synthetic_split(np.random.default_rng(args.seed), root, pred_dir, args)
        meta, masks = root / "valid_u" / "meta_expressions.json", root / "valid_u" / "mask_dict.json"
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # every video is predicted: a missing one would be a bug
            ours, ours_s, ours_wall = timed(score_mevis, pred_dir, root, "valid_u")
        loop, loop_s, loop_wall = timed(evaluate_mevis_loop, meta, masks, pred_dir)
    max_abs_diff = max(max(abs(ours["per_expression"][name]["J"] - j), abs(ours["per_expression"][name]["F"] - f))
                       for name, (j, f) in loop["per_expression"].items())
    max_abs_diff = max(max_abs_diff, *(abs(ours[key] - loop[key]) for key in ("J", "F", "JF")))
    expression_frames = args.videos * args.expressions * args.frames
    summary = {
        "speedup_vs_loop": loop_s / ours_s,
        "speedup_vs_loop_wall": loop_wall / ours_wall,
        "max_abs_diff": max_abs_diff,
        "loop_cpu_s": loop_s,
        "ours_cpu_s": ours_s,
        "expression_frames": expression_frames,
        "shape": [args.videos, args.frames, args.height, args.width],
        **{key: loop[key] for key in ("J", "F", "JF")},
    }
    if max_abs_diff > 1e-9:
        raise SystemExit(f"the scorers disagree by {max_abs_diff:.3g} (> 1e-9)")
    rows = [("official algorithm, one expression a time", loop_s, loop_wall),
            ("metrics.mevis.score_mevis", ours_s, ours_wall)]
    print(f"{args.videos} videos x {args.frames} frames x {args.height}x{args.width}, {args.objects} objects and "
          f"{args.expressions} expressions a video ({expression_frames} expression-frames)")
    print(f"{'':44}CPU s    wall s")
    print("\n".join(f"{label + ':':44}{cpu:5.2f}  {wall:8.2f}" for label, cpu, wall in rows))
    print(f"speed-up x{summary['speedup_vs_loop']:.1f} (CPU), x{summary['speedup_vs_loop_wall']:.1f} (wall); "
          f"J {loop['J']:.6f}  F {loop['F']:.6f}  J&F {loop['JF']:.6f}; max |difference| = {max_abs_diff:.3g}")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
