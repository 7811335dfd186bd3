"""Ref-DAVIS17 inference and evaluation: palette PNGs per annotator and the DAVIS-2017 unsupervised J&F.

    python inference_davis.py --checkpoint outputs/davis/last.pth --weights weight \\
        --data_root data/ref-davis --output_dir outputs/davis_valid --device cuda --davis_root data/DAVIS
    python inference_davis.py --eval_only --davis_root data/DAVIS --results_dir outputs/davis_valid

``--data_root`` is Ref-DAVIS17 converted to the Ref-YouTube-VOS layout (``scripts/convert_davis_to_ytvos.py``):
four expressions per object, ``exp_id = 4 * object_index + a`` for annotator ``a`` (annot1-first, annot1-full,
annot2-first, annot2-full). For each annotator and video, all objects' expressions run together over clips of
``inference.clip_len`` frames (36); per frame, probabilities under the threshold (0.5) are set to 0, a constant
0.1 background channel is put in front and the argmax gives the object ids, saved as DAVIS-palette PNGs at
``<output_dir>/anno_<a>/<video>/<frame>.png``. Each annotator's folder is then scored with the DAVIS-2017
unsupervised protocol (``metrics.davis``, ``evaluate.py --protocol davis``); the reported number is the mean over
the four annotators. This is the protocol of Ref-DAVIS17's published numbers; ``main.py --eval`` of a davis config
scores each expression's own mask instead (``evaluate.py --protocol ytvos``, docs in ``metrics/protocols.py``), which
gives a different number.

Under ``torchrun --nproc_per_node N`` each process segments its share of the videos (``inference/sharding.py``,
balanced by frame count) and rank 0 alone writes the scores once all are written; the same command again resumes a
job that stopped.
"""
import argparse
from pathlib import Path

import numpy as np

from datasets import read_meta_expressions
from datasets.errors import DatasetFormatError
from inference.cli import add_data_arguments, add_model_arguments, load_predictor
from inference.sharding import folder_holds, run_record, sharded_run
from inference.videos import lazy_frames
from metrics.davis import NUM_ANNOTATORS
from metrics.protocols import score
from util.atomic_write import write_folder
from util.cli import exit_on_user_error, resolve_device
from util.davis_palette import palette_png_bytes
from util.distributed import INFERENCE_TIMEOUT, process_group
from util.graceful_stop import GracefulStop

BACKGROUND_SCORE = 0.1


def annotator_sentences(video: str, expressions: dict) -> list[list[str]]:
    """``[annotator][object]`` sentences of one video whose expressions are grouped 4 per object."""
    if len(expressions) % NUM_ANNOTATORS != 0:
        raise DatasetFormatError(f"video {video!r} has {len(expressions)} expressions; converted Ref-DAVIS17 has "
                                 f"{NUM_ANNOTATORS} per object (exp_id = 4 * object_index + annotator)")
    num_objects = len(expressions) // NUM_ANNOTATORS
    sentences = []
    for annotator in range(NUM_ANNOTATORS):
        exp_ids = [str(NUM_ANNOTATORS * index + annotator) for index in range(num_objects)]
        missing = [exp_id for exp_id in exp_ids if exp_id not in expressions]
        if missing:
            raise DatasetFormatError(f"video {video!r} lacks expressions {missing}; converted Ref-DAVIS17 numbers "
                                     f"them 0..{len(expressions) - 1} (exp_id = 4 * object_index + annotator)")
        sentences.append([expressions[exp_id]["exp"] for exp_id in exp_ids])
    return sentences


def object_ids(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per-object probabilities ``[O, T, H, W]`` -> uint8 ids ``[T, H, W]`` (0 background, object o is o + 1).

    Probabilities under ``threshold`` count as 0 and a constant 0.1 background score competes with the objects.
    """
    scores = np.where(probabilities < threshold, 0.0, probabilities)
    background = np.full((1, *scores.shape[1:]), BACKGROUND_SCORE, dtype=scores.dtype)
    return np.concatenate([background, scores]).argmax(axis=0).astype(np.uint8)


def run_inference(args: argparse.Namespace) -> bool:
    """Write the palette PNGs of every annotator to ``<output_dir>/anno_<a>``; under torchrun each rank writes
    its share of the videos. True on rank 0 once all are written (it then scores them), False on the others."""
    # SIGTERM / SIGINT (also sent to the whole job) raise SystemExit(128 + signal) at once: the video in progress
    # removes its staging folder, finished ones stay; the same command resumes (one process: with --skip_existing).
    with GracefulStop(exit_at_once=True), process_group(resolve_device(args.device), INFERENCE_TIMEOUT) as rank:
        return _run_inference(args, rank)


def _run_inference(args: argparse.Namespace, rank: int) -> bool:
    predictor = load_predictor(args)
    data_root = Path(args.data_root or predictor.cfg["data_root"])
    clip_len = predictor.cfg["inference"]["clip_len"] if args.clip_len is None else args.clip_len
    output_dir = Path(args.output_dir)
    folders = [output_dir / f"anno_{annotator}" for annotator in range(NUM_ANNOTATORS)]
    videos = read_meta_expressions(data_root, args.split)
    for video, entry in videos.items():  # every video's grouping is checked before anything is written
        annotator_sentences(video, entry["expressions"])
    output_dir.mkdir(parents=True, exist_ok=True)

    def segment(video: str, entry: dict) -> None:
        for folder, sentences in zip(folders, annotator_sentences(video, entry["expressions"])):
            frames = lazy_frames(data_root, args.split, video, entry["frames"])  # decoded clip by clip
            results = predictor.stream(frames, sentences, clip_len)  # probabilities [O, H, W] a frame
            write_folder(folder / video, {f"{frame}.png": palette_png_bytes(object_ids(probabilities[:, None],
                                                                                       predictor.threshold)[0])
                                          for frame, _, probabilities in results})

    def done(video: str, entry: dict) -> bool:
        return all(folder_holds(folder / video, [f"{frame}.png" for frame in entry["frames"]]) for folder in folders)

    record = run_record(entry="inference_davis.py", checkpoint=args.checkpoint, config=args.config,
                        weights=args.weights, data_root=str(data_root), split=args.split, clip_len=clip_len,
                        amp=args.amp)
    if not sharded_run(videos, segment, done, output_dir, record, args.skip_existing):
        return False
    print(f"wrote the palette PNGs of {len(videos)} videos to {', '.join(str(folder) for folder in folders)}")
    return True


def report(davis_root: Path, results_dir: Path) -> None:
    """Print the table and, as the last line, the JSON result of ``results_dir`` (one or four annotators): what
    ``evaluate.py --protocol davis`` prints."""
    score("davis", results_dir, davis_root, "val").print()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval_only", action="store_true",
                        help="only evaluate --results_dir against --davis_root (no model); prints a table and, as "
                             "the last line, a JSON object {J, F, JF, per_object}, or with anno_0..anno_3 inside "
                             "--results_dir their means and per_annotator")
    add_model_arguments(parser)
    add_data_arguments(
        parser, data_root="converted Ref-DAVIS17 in the Ref-YouTube-VOS layout (default: the config's `data_root`)",
        output_dir="where anno_0..anno_3/<video>/<frame>.png are written",
        clip_len="frames per forward pass (default: the config's inference.clip_len, 36 in the paper)")
    parser.add_argument("--skip_existing", action="store_true",
                        help="keep the videos whose four annotator folders are already complete under --output_dir "
                             "and predict only the others: resumes an interrupted run (under torchrun the same "
                             "command does this by default)")
    parser.add_argument("--davis_root", help="the DAVIS-2017 folder with ImageSets/2017/val.txt and "
                                             "Annotations_unsupervised/480p; after inference, evaluates the four "
                                             "annotators and prints their mean")
    parser.add_argument("--results_dir", help="--eval_only: one annotator's folder (<video>/<frame>.png) or the "
                                              "folder holding anno_0..anno_3")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.eval_only:
        if not (args.davis_root and args.results_dir):
            parser.error("--eval_only needs --davis_root and --results_dir")
        report(Path(args.davis_root), Path(args.results_dir))
        return 0
    if not (args.checkpoint and args.output_dir):
        parser.error("inference needs --checkpoint and --output_dir (or use --eval_only)")
    if run_inference(args) and args.davis_root:  # rank 0 scores all the videos
        report(Path(args.davis_root), Path(args.output_dir))
    return 0


if __name__ == "__main__":
    exit_on_user_error(main)
