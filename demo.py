"""Segment the objects that sentences describe in your own video: mask PNGs and overlay videos per sentence.

    python demo.py --video clip.mp4 --text "the dog running to the left" --text "the man in a red shirt" \\
        --checkpoint outputs/ytvos_hcd/last.pth --weights weight --out outputs/my_clip --device cuda

--video is a file that PyAV/ffmpeg decodes (mp4, avi, webm, ...) or a folder of .jpg/.png frames sorted by name.
The output folder holds, for the k-th --text (k = 0, 1, ...):

    <out>/sentences.json           {"0": "the dog running to the left", "1": ...}
    <out>/<k>/masks/<frame>.png    one 8-bit PNG per input frame, 0 background / 255 object, at the input size;
                                   <frame> is 00000, 00001, ... for a video file, the frame's file stem for a folder
    <out>/<k>/overlay.mp4          the video with the mask in colour and the sentence written on it
    <out>/<k>/overlay.gif          the same as an endlessly looping GIF

The video is decoded, segmented and written window by window (``Predictor.stream``: clips of --clip_len frames that
overlap by --overlap frames, the probabilities of the shared frames averaged), so memory depends on the clip length
and the resolution, not on the video length (the GIF is
assembled in memory, one byte per pixel and frame). All sentences go through each clip together and share its
visual encoding. The results appear in <out> once complete; an <out> holding an earlier demo result is replaced.
"""
import argparse
import json
from contextlib import ExitStack
from pathlib import Path

from tqdm import tqdm

from inference.cli import add_model_arguments, clip_flags_problem, load_predictor
from inference.writers import mask_png_bytes
from util.atomic_write import atomic_directory
from util.cli import exit_on_user_error
from util.errors import UserInputError
from util.video_io import GifWriter, Mp4Writer, open_video
from util.visualisation import mask_color, overlay_frame

SENTENCES_FILE = "sentences.json"


def prepare_output(out: Path) -> None:
    """Fail early unless ``out`` is absent, empty or an earlier demo result (which will be replaced)."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SENTENCES_FILE).is_file():
        raise UserInputError(f"--out {out} already holds files that are not a demo result; pass a new or empty folder")


def run_demo(args: argparse.Namespace) -> Path:
    """Segment ``args.video`` for every ``args.text`` and write the results to ``args.out``; returns it."""
    out = Path(args.out)
    prepare_output(out)
    source = open_video(args.video)
    predictor = load_predictor(args)
    fps = args.fps or source.fps
    threshold = predictor.threshold if args.threshold is None else args.threshold
    total = source.num_frames if args.max_frames is None else min(source.num_frames or args.max_frames,
                                                                  args.max_frames)
    with atomic_directory(out, replace=True) as staging:
        mask_dirs = [staging / str(k) / "masks" for k in range(len(args.text))]
        for mask_dir in mask_dirs:
            mask_dir.mkdir(parents=True)
        (staging / SENTENCES_FILE).write_text(json.dumps({str(k): text for k, text in enumerate(args.text)},
                                                         indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        with ExitStack() as writers:
            videos = [writers.enter_context(Mp4Writer(staging / str(k) / "overlay.mp4", fps))
                      for k in range(len(args.text))]
            gifs = [writers.enter_context(GifWriter(staging / str(k) / "overlay.gif", fps))
                    for k in range(len(args.text))]
            frames = source.frames(args.max_frames)
            results = predictor.stream(frames, args.text, args.clip_len, args.overlap)
            for name, frame, probabilities in tqdm(results, total=total, desc="frames", unit="frame"):
                for k, (mask, text) in enumerate(zip(probabilities > threshold, args.text)):
                    (mask_dirs[k] / f"{name}.png").write_bytes(mask_png_bytes(mask))
                    overlay = overlay_frame(frame, mask, text, mask_color(k))
                    videos[k].write(overlay)
                    gifs[k].write(overlay)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", required=True,
                        help="the input: a video file PyAV/ffmpeg decodes (mp4, avi, webm, ...) or a folder of "
                             ".jpg/.jpeg/.png frames, sorted by file name")
    parser.add_argument("--text", action="append", required=True, metavar="SENTENCE",
                        help="a sentence describing one object; repeat --text for several objects (the k-th goes to "
                             "<out>/<k>/)")
    parser.add_argument("--out", required=True,
                        help="output folder (new, empty, or an earlier demo result, which is replaced)")
    add_model_arguments(parser)
    parser.add_argument("--clip_len", type=int, default=36,
                        help="frames per forward pass; bounds the memory of long videos (default: 36)")
    parser.add_argument("--overlap", type=int, default=4,
                        help="frames shared by consecutive clips, whose probabilities are averaged; 0 <= overlap < "
                             "clip_len (default: 4)")
    parser.add_argument("--max_frames", type=int,
                        help="segment only the first N frames (default: all)")
    parser.add_argument("--threshold", type=float,
                        help="probability above which a pixel belongs to the object (default: the config's "
                             "inference.threshold, 0.5)")
    parser.add_argument("--fps", type=float,
                        help="frame rate of overlay.mp4 and overlay.gif (default: the video's own rate; 10 for a "
                             "folder of frames)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` (exit code 2) for flags that cannot work, before anything is loaded."""
    if not args.checkpoint:
        parser.error("--checkpoint is required: a .pth written by main.py or a Predictor.save_pretrained folder")
    for index, text in enumerate(args.text):
        if not text.strip():
            parser.error(f"--text number {index + 1} is empty; every --text must describe an object")
    problem = clip_flags_problem(args.clip_len, args.overlap)
    if problem:
        parser.error(problem)
    if args.max_frames is not None and args.max_frames < 1:
        parser.error(f"--max_frames must be at least 1, got {args.max_frames}")
    if args.fps is not None and args.fps <= 0:
        parser.error(f"--fps must be positive, got {args.fps}")
    if args.threshold is not None and not 0.0 <= args.threshold < 1.0:
        parser.error(f"--threshold must be in [0, 1), got {args.threshold}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    out = run_demo(args)
    print(f"wrote masks and overlays of {len(args.text)} sentence(s) to {out}")
    return 0


if __name__ == "__main__":
    exit_on_user_error(main)
