"""Frames per second of Ref-YouTube-VOS-style inference, by ReferDINO's protocol (``benchmarks/fps_protocol.py``).

    python -m benchmarks.bench_fps --json                              # the tiny model on the CPU
    python -m benchmarks.bench_fps --full_size --amp bf16 --device cuda --size 720 --json   # the paper's model
    # last line: {"fps": ..., "frames": ..., "seconds": ..., ...}

A RefShapes valid split (--videos videos of --frames frames of --size x --size pixels, in the Ref-YouTube-VOS
layout) is generated in a temporary folder and run as ``inference_ytvos.py`` runs it: each video as one clip,
preprocessed like the evaluation data (short side ``data.test_size``), each expression on its own. Decoding the
JPEGs and preprocessing are outside the timing; the timed section is the forward (slot selection included),
cropping, upsampling to the original size and the threshold, synchronised on a GPU. The first expression is a
warm-up. The model: the tiny offline set's components with ``configs/refshapes_tiny.yaml`` (random weights, or
--checkpoint), or with --full_size the paper's configuration on random full-size components
(``benchmarks/full_size.py``), whose frozen parts are held in bf16 under --amp bf16.
"""
import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from benchmarks.fps_protocol import protocol_fps
from benchmarks.full_size import build_random_model, model_config
from datasets import load_frames, read_meta_expressions
from datasets.refshapes import generate_refshapes
from inference.predictor import Predictor
from models import build_model
from models.pretrained import load_pretrained
from testing.tiny_weights import build_tiny_weights
from util.config import load_config
from util.nested_tensor import nested_tensor_from_videos

TINY_CONFIG = REPO / "configs" / "refshapes_tiny.yaml"
AMP_DTYPES = {"none": "float32", "bf16": "bfloat16"}


def build_predictor(args, weights: Path) -> Predictor:
    """The model to time, in eval mode on ``args.device``, with the preprocessing of its config."""
    device = torch.device(args.device)
    if args.full_size:
        cfg = model_config(AMP_DTYPES[args.amp])
        model = build_random_model(cfg, device, AMP_DTYPES[args.amp])[0]
        return Predictor(model, cfg, device)
    if args.checkpoint:
        return Predictor.load(args.checkpoint, weights, device=device)
    torch.manual_seed(0)
    cfg = load_config(TINY_CONFIG)
    cfg["weights"] = str(weights)
    return Predictor(build_model(cfg, load_pretrained(weights))[0], cfg, device)


def expressions(predictor: Predictor, data_root: Path):
    """``(samples [1, T, 3, Hp, Wp], sentence, resized (h, w), original (H, W))`` per expression of the valid
    split, every video decoded and preprocessed once, before its expressions are timed."""
    for video, entry in sorted(read_meta_expressions(data_root, "valid").items()):
        frames = load_frames(data_root, "valid", video, entry["frames"])
        clip, _ = predictor.transforms(frames, {}, random.Random(0))  # [T, 3, h, w]; the test transforms draw nothing
        samples = nested_tensor_from_videos([clip], predictor.size_divisibility).to(predictor.device)
        original = (frames[0].size[1], frames[0].size[0])
        for expression in entry["expressions"].values():
            yield samples, expression["exp"], tuple(clip.shape[-2:]), original


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    parser.add_argument("--full_size", action="store_true",
                        help="the paper's configuration (configs/ytvos_hcd.yaml) on random full-size components "
                             "instead of the tiny model")
    parser.add_argument("--amp", default="none", choices=sorted(AMP_DTYPES),
                        help="--full_size: bf16 frozen components and autocast (default none: float32)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs (default cpu)")
    parser.add_argument("--checkpoint", help="a trained tiny model (main.py .pth or save_pretrained folder) instead "
                                             "of random weights; not with --full_size")
    parser.add_argument("--weights", type=Path,
                        help="tiny pretrained folder for --checkpoint or the random tiny model (default: built in a "
                             "temporary folder)")
    parser.add_argument("--videos", type=int, default=3, help="RefShapes valid videos (default 3)")
    parser.add_argument("--frames", type=int, default=16, help="frames a video, one clip (default 16)")
    parser.add_argument("--size", type=int, default=128, help="frame height and width in pixels (default 128)")
    args = parser.parse_args(argv)
    if min(args.videos, args.frames, args.size) < 1:
        parser.error("--videos, --frames and --size must be at least 1")
    if args.full_size and args.checkpoint:
        parser.error("--checkpoint is a tiny trained model; --full_size times random full-size weights")
    if args.amp != "none" and not args.full_size:
        parser.error("--amp bf16 is for --full_size (the tiny model runs in float32)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = args.weights
        if weights is None and not args.full_size:
            weights = tmp / "weights"
            build_tiny_weights(weights, seed=0)
        data_root = tmp / "refshapes"
        generate_refshapes(data_root, num_videos=1, num_valid_videos=args.videos, num_frames=args.frames,
                           size=args.size, seed=0)
        predictor = build_predictor(args, weights)
        result = protocol_fps(predictor.model, expressions(predictor, data_root), AMP_DTYPES[args.amp],
                              predictor.threshold)
    result.update(model="full-size" if args.full_size else "tiny", device=args.device, amp=args.amp,
                  size=args.size, frames_per_video=args.frames, threads=torch.get_num_threads())
    print(f"{result['fps']:.2f} frames/s: {result['frames']} frames of {result['expressions']} expressions in "
          f"{result['seconds']:.2f} s ({result['model']} model, {args.device}, amp {args.amp})")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
