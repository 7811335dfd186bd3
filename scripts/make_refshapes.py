"""Generate RefShapes, the procedural referring-video dataset, in the Ref-YouTube-VOS or the MeViS layout.

Usage (from the repository root):
    python -m scripts.make_refshapes --out data/refshapes
    python -m scripts.make_refshapes --out data/refshapes_mevis --format mevis    # + multi-object expressions
    python -m scripts.make_refshapes --out data/refshapes_refcoco --format refcoco  # still images, RefCOCO json
"""
import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path


from datasets.refshapes import LAYOUTS, MAX_FRAMES, MIN_FRAMES, MIN_SIZE, generate_refshapes


def int_in_range(low: int, high: int | None = None):
    """An argparse type accepting integers in [low, high] (no upper bound when high is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Generate RefShapes: seeded videos of moving coloured shapes with referring expressions "
                    "(appearance, size, position, relation and motion-only), written in the Ref-YouTube-VOS "
                    "layout (meta_expressions/, train/, valid/ with annotations kept for local scoring).")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder; must not exist or be empty (it is written atomically)")
    parser.add_argument("--videos", type=int_in_range(1), default=200,
                        help="number of training videos (default: 200)")
    parser.add_argument("--valid_videos", type=int_in_range(0), default=40,
                        help="number of validation videos, ground truth included (default: 40)")
    parser.add_argument("--frames", type=int_in_range(MIN_FRAMES, MAX_FRAMES), default=16,
                        help=f"frames per video, named 00000, 00005, ... (default: 16, at least {MIN_FRAMES})")
    parser.add_argument("--size", type=int_in_range(MIN_SIZE), default=128,
                        help=f"frame side in pixels, frames are square (default: 128, at least {MIN_SIZE})")
    parser.add_argument("--seed", type=int_in_range(0), default=0,
                        help="random seed; the same seed gives byte-identical files (default: 0)")
    parser.add_argument("--format", choices=LAYOUTS, default="ytvos",
                        help="ytvos: the Ref-YouTube-VOS layout (meta_expressions/, Annotations/ PNGs); mevis: the "
                             "MeViS layout (train/, valid_u/ with mask_dict.json, valid/ without masks) with the "
                             "same videos plus multi-object expressions such as 'the two red circles'; refcoco: "
                             "the middle frame of each video as a still image in the COCO-format RefCOCO json "
                             "layout (train2014/, refcoco/instances_refcoco_{train,val}.json) with the expressions "
                             "a still image resolves, for image pretraining (default: ytvos)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        generate_refshapes(args.out, num_videos=args.videos, num_valid_videos=args.valid_videos,
                           num_frames=args.frames, size=args.size, seed=args.seed, layout=args.format)
    except FileExistsError as error:
        sys.exit(f"error: {error}")
    elapsed = time.perf_counter() - start
    if args.format == "refcoco":
        train = json.loads((args.out / "refcoco" / "instances_refcoco_train.json").read_text())
        kinds = Counter(image["kind"] for image in train["images"])
    else:
        train_json = {"ytvos": args.out / "meta_expressions" / "train", "mevis": args.out / "train"}[args.format]
        meta = json.loads((train_json / "meta_expressions.json").read_text())
        kinds = Counter(e["kind"] for v in meta["videos"].values() for e in v["expressions"].values())
    total = sum(kinds.values())
    shares = ", ".join(f"{kind} {count / total:.0%}" for kind, count in sorted(kinds.items()))
    print(f"RefShapes: {args.videos} train + {args.valid_videos} valid videos of {args.frames} frames at "
          f"{args.size}x{args.size} written to {args.out} ({args.format} layout) in {elapsed:.1f} s; {total} train "
          f"expressions ({shares}).")


if __name__ == "__main__":
    main()
