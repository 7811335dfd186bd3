"""Peak memory against video length: a process segmenting a short and a long mp4 the way demo.py and app.py do.

    python -m benchmarks.bench_long_video --json
    # last line: {"rss_30": MB, "rss_600": MB, "rss_ratio": rss_600 / rss_30, ...}

Each video (a square moving over a gradient, --size x --size pixels) is segmented in a fresh process with the tiny
offline model (random weights: memory does not depend on what it has learnt): decoded with ``util.video_io``,
segmented by ``Predictor.stream`` in clips of --clip_len frames overlapping by --overlap, and its mask PNGs
written to a temporary folder, frame by frame. The figure is that process's peak resident set (``ru_maxrss``).
With streaming it is set by the model and one clip, so the ratio stays near 1 however long the video is; a
predictor that held the whole video would grow with it (600 frames of 128 x 128 are 29 MB of RGB, 39 MB of
probabilities per sentence).
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

CONFIG = REPO / "configs" / "refshapes_tiny.yaml"
SENTENCE = "the white square moving right"


def moving_square(num_frames: int, size: int):
    """uint8 frames [size, size, 3]: a white square crossing a fixed colour gradient, one a call."""
    ramp = np.linspace(0, 200, size, dtype=np.float32)
    background = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                           np.full((size, size), 60, np.float32)], axis=-1).astype(np.uint8)  # [size, size, 3]
    side = size // 4
    for index in range(num_frames):
        frame = background.copy()
        left = index * 3 % (size - side)
        frame[size // 3:size // 3 + side, left:left + side] = 255
        yield frame


def write_video(path: Path, num_frames: int, size: int) -> Path:
    from util.video_io import Mp4Writer

    with Mp4Writer(path, fps=25) as writer:
        for frame in moving_square(num_frames, size):
            writer.write(frame)
    return path


def measure(video: Path, weights: Path, clip_len: int, overlap: int) -> dict:
    """Decode -> segment -> write one video in this process; its frame count and peak RSS in MB."""
    import torch

    from models import build_model
    from inference.predictor import Predictor
    from models.pretrained import load_pretrained
    from util.config import load_config
    from inference.writers import mask_png_bytes
    from util.video_io import open_video

    torch.manual_seed(0)
    cfg = load_config(CONFIG)
    cfg["weights"] = str(weights)
    predictor = Predictor(build_model(cfg, load_pretrained(weights))[0], cfg)
    frames = 0
    with tempfile.TemporaryDirectory() as out:
        for name, _, probabilities in predictor.stream(open_video(video).frames(), [SENTENCE], clip_len, overlap):
            (Path(out) / f"{name}.png").write_bytes(mask_png_bytes(probabilities[0] > predictor.threshold))
            frames += 1
    return {"frames": frames, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_in_child(video: Path, weights: Path, args) -> dict:
    """``measure`` in a fresh interpreter, so that each peak RSS belongs to one video alone."""
    command = [sys.executable, "-m", "benchmarks.bench_long_video", "--measure", str(video), "--weights", str(weights),
               "--clip_len", str(args.clip_len), "--overlap", str(args.overlap)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    parser.add_argument("--short", type=int, default=30, help="frames of the short video (default 30)")
    parser.add_argument("--long", type=int, default=600, help="frames of the long video (default 600)")
    parser.add_argument("--size", type=int, default=128, help="frame height and width in pixels (default 128)")
    parser.add_argument("--clip_len", type=int, default=36, help="frames per forward pass (default 36, as demo.py)")
    parser.add_argument("--overlap", type=int, default=4, help="frames shared by consecutive clips (default 4)")
    parser.add_argument("--measure", metavar="VIDEO", type=Path,
                        help="internal: segment VIDEO in this process and print its frames and peak RSS as JSON")
    parser.add_argument("--weights", type=Path,
                        help="tiny pretrained folder (default: built in a temporary folder; needed by --measure)")
    args = parser.parse_args(argv)
    if min(args.short, args.long, args.size) < 1 or not 0 <= args.overlap < args.clip_len:
        parser.error("need positive --short, --long and --size, and 0 <= --overlap < --clip_len")
    if args.measure and not args.weights:
        parser.error("--measure needs --weights")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.weights, args.clip_len, args.overlap)))
        return 0
    from testing.tiny_weights import build_tiny_weights

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = args.weights
        if weights is None:
            weights = tmp / "weights"
            build_tiny_weights(weights, seed=0)
        runs = {}
        for frames in (args.short, args.long):
            video = write_video(tmp / f"{frames}.mp4", frames, args.size)
            runs[frames] = run_in_child(video, weights, args)
            if runs[frames]["frames"] != frames:
                raise RuntimeError(f"segmented {runs[frames]['frames']} frames of a {frames}-frame video")
            print(f"{frames:5d} frames at {args.size}x{args.size}: peak RSS {runs[frames]['rss_mb']:.0f} MB")
    short, long = runs[args.short]["rss_mb"], runs[args.long]["rss_mb"]
    result = {f"rss_{args.short}": round(short, 1), f"rss_{args.long}": round(long, 1),
              "rss_ratio": round(long / short, 3), "size": args.size, "clip_len": args.clip_len,
              "overlap": args.overlap}
    print(f"ratio {result['rss_ratio']:.3f}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
