"""Ref-YouTube-VOS inference: the submission tree and zip, a completeness check of a zip, and local J&F.

    python inference_ytvos.py --checkpoint outputs/ytvos_hcd/last.pth --weights weight \\
        --data_root data/ref-youtube-vos --output_dir outputs/ytvos_valid --device cuda
    python inference_ytvos.py --check_zip outputs/ytvos_valid/submission.zip --data_root data/ref-youtube-vos
    python inference_ytvos.py --score --pred_dir outputs/refshapes_valid --gt_root data/refshapes --split valid

Inference writes ``<output_dir>/Annotations/<video>/<exp_id>/<frame>.png`` (8-bit "L", 0/255, original size, one
per frame listed in the json) and ``<output_dir>/submission.zip`` with ``Annotations/`` at its root, the layout
the Ref-YouTube-VOS server expects; the zip is written only once every PNG has been checked. Every video runs
in one forward pass per clip with all its expressions (they share the backbone's work), the whole video as one
clip unless ``--clip_len`` is given. Only the ``exp`` and ``frames`` of the json and the JPEG frames are read,
as in the real valid split; each video's frames are decoded, segmented and encoded clip by clip, so that
memory depends on ``--clip_len``, not on the video's length. The valid json of Ref-YouTube-VOS lists 507
videos: the 202 of the valid split and the 305 of the test split; the videos of
``meta_expressions/test/meta_expressions.json`` are dropped when that file is present.

``torchrun --nproc_per_node N inference_ytvos.py ...`` (gloo on CPU, NCCL on GPU) gives each process its share of
the videos, balanced by frame count (``inference/sharding.py``); rank 0 waits for all, checks every PNG and writes
the zip, byte for byte the one a single process writes. A video that fails ends the job with an error naming it;
running the same command again keeps the finished videos (recorded in ``<output_dir>/run.json``) and redoes the rest.
"""
import argparse
import sys
import zipfile
from pathlib import Path

from datasets import read_meta_expressions
from datasets.ytvos import first_frame_sizes, meta_expressions_path, read_meta_json
from inference.cli import add_data_arguments, add_model_arguments, load_predictor
from inference.sharding import run_record
from inference.videos import write_video_masks_sharded
from inference.writers import check_zip, expected_masks, write_submission_zip
from metrics.protocols import score
from util.cli import exit_on_user_error, resolve_device
from util.config import save_config
from util.distributed import INFERENCE_TIMEOUT, process_group
from util.graceful_stop import GracefulStop

TEST_JSON_HINT = ("the Ref-YouTube-VOS download's meta_expressions/test/meta_expressions.json; ReferFormer issue #6 "
                  "links it")


def read_test_videos(path: Path) -> set[str]:
    """The video ids of a test ``meta_expressions.json``."""
    return set(read_meta_json(path, hint=f"download it again ({TEST_JSON_HINT})"))


def submission_videos(data_root: Path, split: str) -> dict:
    """The json's videos of ``split`` that a submission covers: without the test videos for the valid split.

    Says on stderr what it dropped, or (one line) that the test json is missing and all videos are kept.
    """
    videos = read_meta_expressions(data_root, split)
    if split != "valid":
        return videos
    test_json = meta_expressions_path(data_root, "test")
    if not test_json.is_file():
        print(f"warning: {test_json} not found, so all {len(videos)} videos of "
              f"{meta_expressions_path(data_root, split)} are used; the Ref-YouTube-VOS valid json lists 507 videos "
              f"(202 valid + 305 test) and the server scores the 202: to drop the test videos put {TEST_JSON_HINT} "
              f"there", file=sys.stderr)
        return videos
    test_videos = read_test_videos(test_json)
    kept = {video: entry for video, entry in videos.items() if video not in test_videos}
    print(f"dropped {len(videos) - len(kept)} test videos listed in {test_json}; {len(kept)} videos remain",
          file=sys.stderr)
    return kept


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
    videos = submission_videos(data_root, args.split)
    # The json, the frame lists and each video's first frame header are checked before anything is written; a frame
    # that fails to decode later stops the run with the videos before it complete on disk (resumable with
    # --skip_existing, or by running the same torchrun command again), none half-written, and no zip.
    expected = expected_masks(videos, first_frame_sizes(data_root, args.split, videos))
    annotations = output_dir / "Annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_config(predictor.cfg, output_dir / "config.yaml")
    record = run_record(entry="inference_ytvos.py", checkpoint=args.checkpoint, config=args.config,
                        weights=args.weights, data_root=str(data_root), split=args.split, clip_len=args.clip_len,
                        threshold=args.threshold, amp=args.amp)
    if not write_video_masks_sharded(predictor, data_root, args.split, videos, expected, annotations, output_dir,
                                     record, args.clip_len, args.threshold, args.skip_existing):
        return 0  # rank 0 checks and zips every rank's videos
    zip_path = output_dir / "submission.zip"
    write_submission_zip(output_dir, zip_path, expected)
    print(f"wrote {len(expected)} masks of {len(videos)} videos to {annotations} and {zip_path}")
    return 0


def run_check_zip(args: argparse.Namespace) -> int:
    zip_path, data_root = Path(args.check_zip), Path(args.data_root)
    if not zip_path.is_file():
        print(f"{zip_path} does not exist", file=sys.stderr)
        return 1
    videos = submission_videos(data_root, args.split)
    expected = expected_masks(videos, first_frame_sizes(data_root, args.split, videos))
    try:
        problems = check_zip(zip_path, expected)
    except zipfile.BadZipFile as error:
        print(f"{zip_path} is not a readable zip file ({error})", file=sys.stderr)
        return 1
    if problems:
        print("\n".join(problems))
        print(f"{zip_path}: {len(problems)} problems ({len(expected)} masks expected for {len(videos)} videos)")
        return 1
    print(f"{zip_path}: complete ({len(expected)} masks of {len(videos)} videos)")
    return 0


def run_score(args: argparse.Namespace) -> int:
    score("ytvos", args.pred_dir, args.gt_root, args.split).print()  # what evaluate.py --protocol ytvos prints
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--score", action="store_true",
                      help="score the prediction tree --pred_dir against --gt_root's --split (a split with ground "
                           "truth); prints a table and, as the last line, a JSON object {J, F, JF, per_expression, "
                           "by_kind}")
    mode.add_argument("--check_zip", metavar="ZIP",
                      help="check that ZIP is a complete submission for --data_root's --split: lists missing PNGs, "
                           "wrong sizes or values and extra files; exit code 1 if anything is wrong")
    add_model_arguments(parser)
    add_data_arguments(
        parser, data_root="dataset root in the Ref-YouTube-VOS layout (default: the config's `data_root`)",
        split="split folder and meta_expressions/<split> json to predict, check or score; the videos of "
              "meta_expressions/test are dropped from 'valid' (default: valid)",
        output_dir="where Annotations/, submission.zip and config.yaml are written",
        clip_len="frames per forward pass (default: the whole video in one pass, as in the paper)")
    parser.add_argument("--threshold", type=float,
                        help="probability above which a pixel is foreground (default: the config's "
                             "inference.threshold)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="keep the complete video folders already under <output_dir>/Annotations (each is "
                             "written whole) and predict only the others: resumes an interrupted run (under "
                             "torchrun the same command does this by default)")
    parser.add_argument("--pred_dir", help="--score: folder holding Annotations/<video>/<exp_id>/<frame>.png")
    parser.add_argument("--gt_root", help="--score: dataset root with meta_expressions/<split> and "
                                          "<split>/Annotations")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.score:
        if not (args.pred_dir and args.gt_root):
            parser.error("--score needs --pred_dir and --gt_root")
        return run_score(args)
    if args.check_zip:
        if not args.data_root:
            parser.error("--check_zip needs --data_root")
        return run_check_zip(args)
    if not (args.checkpoint and args.output_dir):
        parser.error("inference needs --checkpoint and --output_dir (or use --score / --check_zip)")
    return run_inference(args)


if __name__ == "__main__":
    exit_on_user_error(main)
