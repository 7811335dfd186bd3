"""MeViS inference and scoring: the prediction folders, a checked submission zip for ``valid``, J&F on ``valid_u``.

    python inference_mevis.py --checkpoint outputs/mevis_hcd/last.pth --weights weight --data_root data/mevis \\
        --split valid --output_dir outputs/mevis_hcd/valid --device cuda
    python inference_mevis.py --score --pred_dir outputs/mevis_hcd/valid_u --gt_root data/mevis --split valid_u

Inference writes ``<output_dir>/<video>/<exp_id>/<frame>.png`` (8-bit "L", 0/255, original size) for every frame
of every expression in ``<data_root>/<split>/meta_expressions.json``, each video folder at once (never half
written), and ``config.yaml``. For ``valid`` it then writes ``<output_dir>/submission.zip`` with the video folders
at its root, the layout of the MeViS server (Ref-YouTube-VOS zips hold ``Annotations/`` instead), once every PNG
has been checked. A video runs with all its expressions in each forward pass, in clips of ``--clip_len`` frames.
The model gives one mask per expression: for an expression about several objects, the union of them, which is
what the benchmark scores. Only ``exp`` and ``frames`` of the json and the JPEG frames are read.

Scoring (``metrics/mevis.py``) follows MeViS's ``tools/eval_mevis.py``: per expression the union of its
``anno_id`` masks is the ground truth, J and F (bound_th 0.008) are averaged over its frames and then over the
expressions; a missing video folder scores 0, with a warning. It prints a table and, as the last line, a JSON
object ``{"J", "F", "JF", "expressions", "version", "per_expression": {"<video>/<exp_id>": {"J", "F"}}}``.
MeViS v1 and v2 differ (valid_u: 793 or 907 expressions; valid: 2,236 or 2,523) and their numbers are not
comparable: both modes say which one the json is ("version", "unknown" for any other count).

Under ``torchrun --nproc_per_node N`` each process segments its share of the videos (``inference/sharding.py``,
balanced by frame count) and rank 0 alone writes the zip once all are written; the same command again resumes a
job that stopped.
"""
import argparse
import sys
from pathlib import Path

from datasets.mevis import count_expressions, mevis_version, read_mevis_meta
from datasets.ytvos import first_frame_sizes
from inference.cli import add_data_arguments, add_model_arguments, load_predictor
from inference.sharding import run_record
from inference.videos import write_video_masks_sharded
from inference.writers import expected_masks, write_submission_zip
from metrics.protocols import score
from util.cli import exit_on_user_error, resolve_device
from util.config import save_config
from util.distributed import INFERENCE_TIMEOUT, process_group
from util.graceful_stop import GracefulStop

SPLITS = ("valid_u", "valid")


def describe_split(split: str, videos: dict) -> str:
    """"MeViS v1 valid_u: 50 videos, 793 expressions" (the release told by the count)."""
    count = count_expressions(videos)
    version = mevis_version(split, count)
    name = f"MeViS {version}" if version != "unknown" else "not a MeViS v1/v2 release count"
    return f"{name} {split}: {len(videos)} videos, {count} expressions"


def run_inference(args: argparse.Namespace) -> int:
    # Under torchrun each rank segments its share of the videos.
    # SIGTERM / SIGINT (also sent to the whole job) raise SystemExit(128 + signal) at once: the video in progress
    # removes its staging folder, finished ones stay; the same command resumes (one process: with --skip_existing).
    with GracefulStop(exit_at_once=True), process_group(resolve_device(args.device), INFERENCE_TIMEOUT) as rank:
        return _run_inference(args, rank)


def _run_inference(args: argparse.Namespace, rank: int) -> int:
    predictor = load_predictor(args)
    data_root = Path(args.data_root or predictor.cfg["data_root"])
    output_dir = Path(args.output_dir)
    videos = read_mevis_meta(data_root, args.split)
    # Every video's first frame is read before anything is written: a broken frame stops the run up front.
    expected = expected_masks(videos, first_frame_sizes(data_root, args.split, videos), top="")
    if rank == 0:
        print(describe_split(args.split, videos), file=sys.stderr)
    output_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_config(predictor.cfg, output_dir / "config.yaml")
    clip_len = args.clip_len or predictor.cfg["inference"]["clip_len"]
    record = run_record(entry="inference_mevis.py", checkpoint=args.checkpoint, config=args.config,
                        weights=args.weights, data_root=str(data_root), split=args.split, clip_len=clip_len,
                        amp=args.amp)
    if not write_video_masks_sharded(predictor, data_root, args.split, videos, expected, output_dir, output_dir,
                                     record, clip_len, skip_existing=args.skip_existing):
        return 0  # rank 0 checks and zips every rank's videos
    if args.split == "valid":
        zip_path = output_dir / "submission.zip"
        write_submission_zip(output_dir, zip_path, expected)
        print(f"wrote {len(expected)} masks of {len(videos)} videos to {output_dir} and {zip_path} (video folders "
              "at the zip root, for the MeViS server)")
    else:
        print(f"wrote {len(expected)} masks of {len(videos)} videos to {output_dir}; score them with "
              f"python inference_mevis.py --score --pred_dir {output_dir} --gt_root {data_root} --split {args.split}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    score("mevis", args.pred_dir, args.gt_root, args.split).print()  # what evaluate.py --protocol mevis prints
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--score", action="store_true",
                        help="score the prediction folders --pred_dir against --gt_root's --split (valid_u: it has "
                             "mask_dict.json) as MeViS's tools/eval_mevis.py does; prints a table and, as the last "
                             "line, a JSON object {J, F, JF, expressions, version, per_expression}")
    parser.add_argument("--pred_dir", help="--score: folder holding <video>/<exp_id>/<frame>.png")
    parser.add_argument("--gt_root", help="--score: MeViS root with <split>/meta_expressions.json and "
                                          "<split>/mask_dict.json")
    add_model_arguments(parser)
    add_data_arguments(
        parser, data_root="MeViS root holding <split>/JPEGImages and <split>/meta_expressions.json (default: the "
                          "config's `data_root`)",
        split="valid_u (ground truth in mask_dict.json: score it with --score) or valid (no masks: inference also "
              "writes submission.zip for the server) (default: valid_u)", split_choices=SPLITS, split_default="valid_u",
        output_dir="where <video>/<exp_id>/<frame>.png, config.yaml and, for valid, submission.zip are written",
        clip_len="frames per forward pass (default: the config's inference.clip_len)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="keep the complete video folders already under --output_dir (each is written whole) "
                             "and predict only the others: resumes an interrupted run (under torchrun the same "
                             "command does this by default)")
    return parser


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is missing or wrong in the parsed flags of either mode, or None."""
    if args.score:
        if not (args.pred_dir and args.gt_root):
            return "--score needs --pred_dir and --gt_root"
        if args.split != "valid_u":
            return "--score needs a split with ground truth: --split valid_u (valid is scored by the server)"
        return None
    if not (args.checkpoint and args.output_dir):
        return "inference needs --checkpoint and --output_dir (or use --score)"
    if args.clip_len is not None and args.clip_len < 1:
        return f"--clip_len must be >= 1, got {args.clip_len}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = argument_problem(args)
    if problem:
        parser.error(problem)
    return run_score(args) if args.score else run_inference(args)


if __name__ == "__main__":
    exit_on_user_error(main)
