"""Speed and agreement of the DAVIS-2017 unsupervised evaluator against a faithful frame-by-frame loop.

Builds a synthetic DAVIS-like set (moving ellipses, a void band, proposals that are jittered copies of the
objects with permuted ids), scores it with the official toolkit's algorithm one pair and one frame at a time
(``testing/davis_reference_loop.py``) and with ``metrics/davis.py``, checks that every global number agrees,
and prints the speed ratio of the metric computation (both sides get the same in-memory label maps). It also
writes the set as PNG folders and times ``evaluate_davis_unsupervised`` end to end, PNG reading included.

OpenCV runs single-threaded for both sides, and the ratio is taken on process CPU time, which a busy shared
machine disturbs far less than wall time (both are printed).

    python -m benchmarks.bench_eval            # 5 videos x 50 frames x 480x854, 3 objects, 3 proposals
    python -m benchmarks.bench_eval --json     # last line: {"speedup_vs_loop": ..., "max_abs_diff": ..., ...}
"""
import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


from benchmarks.timing import timed
from metrics.davis import evaluate_davis_unsupervised, match_video, summarize
from testing.davis_reference_loop import evaluate_loop

GLOBAL_KEYS = ("J", "F", "JF", "J_recall", "J_decay", "F_recall", "F_decay")


def synthetic_video(rng: np.random.Generator, frames: int, height: int, width: int, objects: int,
                    proposals: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (GT ``[T, H, W]`` uint8 ids with a void band of 255, results ``[T, H, W]`` uint8 proposal ids)."""
    gt = np.zeros((frames, height, width), np.uint8)
    res = np.zeros((frames, height, width), np.uint8)
    centres = rng.uniform([0.2 * width, 0.2 * height], [0.8 * width, 0.8 * height], size=(objects, 2))
    velocity = rng.uniform(-3, 3, size=(objects, 2))
    axes = rng.uniform(0.05, 0.13, size=(objects, 2)) * width
    proposal_ids = rng.permutation(proposals) + 1
    for t in range(frames):
        for o in range(objects):
            cx, cy = centres[o] + velocity[o] * t
            cv2.ellipse(gt[t], (int(cx), int(cy)), (int(axes[o, 0]), int(axes[o, 1])), 15 * o, 0, 360, o + 1, -1)
            if o < proposals:
                dx, dy = rng.normal(0, 4, 2)
                sx, sy = rng.uniform(0.85, 1.1, 2)
                cv2.ellipse(res[t], (int(cx + dx), int(cy + dy)), (int(axes[o, 0] * sx), int(axes[o, 1] * sy)),
                            15 * o + rng.normal(0, 5), 0, 360, int(proposal_ids[o]), -1)
        gt[t, : height // 80] = 255
    return gt, res


def write_davis_tree(root: Path, videos: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[Path, Path]:
    """Write the GT as ``root/DAVIS`` and the results as ``root/results`` palette PNGs."""
    davis, results = root / "DAVIS", root / "results"
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{name}\n" for name in videos))
    # 256 distinct colours: PNG saving may merge equal palette entries and renumber the ids
    palette = [v for i in range(256) for v in (i, 255 - i, (37 * i) % 256)]
    for name, (gt, res) in videos.items():
        for folder, labels in ((davis / "Annotations_unsupervised" / "480p" / name, gt), (results / name, res)):
            folder.mkdir(parents=True)
            for t, frame in enumerate(labels):
                image = Image.fromarray(frame, mode="P")
                image.putpalette(palette)
                image.save(folder / f"{t:05d}.png")
    return davis, results


def vectorised(videos: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    scores = {}
    for name, (gt, res) in videos.items():
        j_rows, f_rows = match_video(gt, res, name)
        scores.update({f"{name}_{i + 1}": (j, f) for i, (j, f) in enumerate(zip(j_rows, f_rows))})
    return summarize(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=5, help="number of synthetic videos (default 5)")
    parser.add_argument("--frames", type=int, default=50, help="frames per video (default 50)")
    parser.add_argument("--height", type=int, default=480, help="frame height (default 480)")
    parser.add_argument("--width", type=int, default=854, help="frame width (default 854)")
    parser.add_argument("--objects", type=int, default=3, help="ground-truth objects per video (default 3)")
    parser.add_argument("--proposals", type=int, default=3, help="proposals per video (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic set (default 0)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    rng = np.random.default_rng(args.seed)
    videos = {f"video{i:02d}": synthetic_video(rng, args.frames, args.height, args.width, args.objects,
                                               args.proposals) for i in range(args.videos)}
    warm_up = {name: (gt[:2], res[:2]) for name, (gt, res) in list(videos.items())[:1]}  # first-call costs
    vectorised(warm_up)
    evaluate_loop(warm_up)
    ours, ours_s, ours_wall = timed(vectorised, videos)
    loop, loop_s, loop_wall = timed(evaluate_loop, videos)
    with tempfile.TemporaryDirectory() as tmp:
        davis, results = write_davis_tree(Path(tmp), videos)
        from_files, files_s, files_wall = timed(evaluate_davis_unsupervised, davis, results, "val")
    max_abs_diff = max(max(abs(ours[k] - loop[k]), abs(from_files[k] - loop[k])) for k in GLOBAL_KEYS)
    summary = {
        "speedup_vs_loop": loop_s / ours_s,
        "speedup_vs_loop_wall": loop_wall / ours_wall,
        "max_abs_diff": max_abs_diff,
        "loop_cpu_s": loop_s,
        "vectorised_cpu_s": ours_s,
        "end_to_end_cpu_s": files_s,
        "end_to_end_speedup_vs_loop": loop_s / files_s,
        "pair_frames": args.videos * args.frames * max(args.objects, args.proposals) * args.objects,
        "shape": [args.videos, args.frames, args.height, args.width],
        **{k: loop[k] for k in ("J", "F", "JF")},
    }
    print(f"{args.videos} videos x {args.frames} frames x {args.height}x{args.width}, {args.objects} objects, "
          f"{args.proposals} proposals")
    print("                                          CPU s    wall s")
    print(f"frame-by-frame loop (toolkit algorithm): {loop_s:7.2f}  {loop_wall:7.2f}")
    print(f"metrics.davis (same label maps):       {ours_s:7.2f}  {ours_wall:7.2f}   "
          f"speed-up x{loop_s / ours_s:.1f} (CPU), x{loop_wall / ours_wall:.1f} (wall)")
    print(f"evaluate_davis_unsupervised from PNGs:   {files_s:7.2f}  {files_wall:7.2f}   (PNG reading included)")
    print("           " + "  ".join(f"{k:>9}" for k in GLOBAL_KEYS))
    for label, values in (("loop", loop), ("ours", ours), ("from PNGs", from_files)):
        print(f"{label:>10} " + "  ".join(f"{values[k]:9.6f}" for k in GLOBAL_KEYS))
    print(f"max |difference| = {max_abs_diff:.3g}")
    if max_abs_diff > 1e-9:
        raise SystemExit(f"the evaluators disagree by {max_abs_diff:.3g} (> 1e-9)")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
