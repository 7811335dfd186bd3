"""Evaluation of a model on the config's dataset: ``run_evaluation(model, cfg, args)``, called by ``main.py --eval``.

- **A2D-Sentences / JHMDB-Sentences** (``a2d``: its test subset; ``jhmdb``): every window is run with all query slots
  refined, and every slot is scored on the **annotated** frame of the window (``target["annotated_index"]``; the
  paper's code scores frame 0 whichever frame is annotated, docs/architecture.md): score = sigmoid of its class
  logit there, mask = sigmoid of its refined logits > 0.5, cropped to the unpadded size and resized
  (nearest-neighbour) to the original frame size, as MTTR and ReferFormer do. Ground truth is the annotated frame's
  mask at the original size. ``metrics.a2d`` gives mAP@[.5:.95], AP50 and AP75 over the predictions of
  **all** query slots (the MTTR / ReferFormer convention behind the published numbers: ``"map_over":
  "all_queries"``), and overall IoU, mean IoU and P@0.5..0.9 of the top-scoring slot per sample. The mAP of the
  top-scoring slot alone is reported beside it (``mAP_top1``, ``AP50_top1``, ``AP75_top1``; ReferFormer#39).
  The predictions and the ground truth are kept as ``<output_dir>/eval_<dataset>/predictions.json`` and
  ``ground_truth.json``, which ``python evaluate.py --protocol a2d`` scores again to the same numbers.
- **RefShapes / Ref-YouTube-VOS layout / converted Ref-DAVIS17** (``refshapes``, ``ytvos``, ``davis``): the
  ``valid`` split, which must have ground truth, is segmented with ``inference.predictor.Predictor`` (whole videos;
  ``inference.clip_len`` frames a pass for davis) into ``<output_dir>/eval_valid/Annotations/<video>/<exp_id>/
  <frame>.png`` and scored with ``metrics.ytvos.score_predictions``: J, F and J&F over expressions, and per
  expression kind (the ``ytvos`` protocol). For ``davis`` this is **not** Ref-DAVIS17's reported number, and the
  JSON says so (``"protocol": "ytvos"``): that one is ``inference_davis.py``'s DAVIS-2017 unsupervised protocol
  (objects of each annotator compete per pixel, Hungarian matching, mean over four annotators; ``evaluate.py
  --protocol davis``; ``metrics/protocols.py`` explains the difference).
- **MeViS** (``mevis``): the ``valid_u`` split is segmented the same way (``inference.clip_len`` frames a pass) into
  ``<output_dir>/eval_valid_u/<video>/<exp_id>/<frame>.png`` and scored with ``metrics.mevis.score_mevis`` as the
  official ``tools/eval_mevis.py`` scores it (the union of each expression's objects is its ground truth).
- **RefCOCO / RefCOCO+ / RefCOCOg** (``refcoco``): the val json of every set of ``data.refcoco_sets``, image by
  image with the top query's mask at the original size: oIoU, mIoU and P@0.5..0.9 per set (``metrics.refcoco``).

Under ``torchrun`` every rank evaluates its shard (every world_size-th sample; videos balanced by frame count,
``inference.sharding.shard``) and rank 0 computes the metrics. Rank 0 prints a table and, as the last line, the
metrics as one JSON object, which it also writes to ``<output_dir>/eval_<dataset>.json``.

As a command, ``python evaluate.py --protocol ytvos|davis|mevis|a2d|jhmdb --pred_dir ... --gt_root ...`` is the one
scorer of prediction files (``metrics.protocols.score``; ``main`` below), which the inference scripts' ``--score`` /
``--eval_only`` modes share.
"""
import argparse
import json
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import Subset
from tqdm import tqdm

from datasets import build_dataset, read_meta_expressions
from datasets.mevis import mask_dict_path, read_mevis_meta
from datasets.ytvos import require_ground_truth
from inference.predictor import Predictor
from inference.sharding import shard
from inference.videos import write_video_masks
from metrics.a2d import build_coco_ground_truth
from metrics.protocols import A2D_GROUND_TRUTH, A2D_PREDICTIONS, DEFAULT_SPLITS, PROTOCOLS, score
from metrics.refcoco import intersection_union, refcoco_scores
from metrics.tables import refcoco_table, score_table
from util.amp import autocast
from util.atomic_write import atomic_write
from util.cli import exit_on_user_error
from util.distributed import all_gather_objects, barrier, get_rank, get_world_size, is_main_process
from util.errors import UserInputError
from util.graceful_stop import StopSafeDataLoader
from util.mask_rle import mask_to_rle, rle_to_mask
from util.nested_tensor import collate_clips

A2D_DATASETS = ("a2d", "jhmdb")
YTVOS_DATASETS = ("refshapes", "ytvos", "davis")
MEVIS_DATASETS = ("mevis",)
REFCOCO_DATASETS = ("refcoco",)  # image-level oIoU / mIoU on the val jsons (metrics/refcoco.py)
MASK_THRESHOLD = 0.5  # the A2D / JHMDB protocol's threshold on the mask probability
PREDICTION_DIR = "eval_valid"
MEVIS_SPLIT = "valid_u"  # the MeViS split with ground truth
DAVIS_AS_YTVOS = ("Ref-DAVIS17 valid, each expression's own mask scored as Ref-YouTube-VOS is (evaluate.py --protocol "
                  "ytvos); Ref-DAVIS17's reported number is the DAVIS-2017 unsupervised protocol of "
                  "inference_davis.py (evaluate.py --protocol davis)")


def run_evaluation(model: torch.nn.Module, cfg: dict, args: argparse.Namespace) -> dict:
    """Evaluate ``model`` (already on its device) on ``cfg["dataset"]``; see the module docstring.

    ``args.amp`` ("none", "bf16", "fp16" or None) sets the autocast of the forward passes. Returns the metrics
    on rank 0 (the keys of the printed JSON) and an empty dict on the other ranks.
    """
    name = cfg["dataset"]
    amp = args.amp or "none"
    output_dir = Path(cfg["output_dir"])
    model.eval()
    if name in A2D_DATASETS:
        report = evaluate_a2d(model, cfg, amp, output_dir / f"eval_{name}")
        if not is_main_process():
            return {}
        table, results = report.text, report.results
    elif name in YTVOS_DATASETS:
        report = evaluate_ytvos(model, cfg, amp, output_dir / PREDICTION_DIR)
        if not is_main_process():
            return {}
        table = score_table(report.scores)
        results = {key: report.scores[key] for key in ("J", "F", "JF", "by_kind")}
        if name == "davis":  # not the number Ref-DAVIS17 reports: say which protocol it is
            table = f"{DAVIS_AS_YTVOS}\n{table}"
            results["protocol"] = "ytvos"
    elif name in MEVIS_DATASETS:
        report = evaluate_mevis(model, cfg, amp, output_dir / f"eval_{MEVIS_SPLIT}")
        if not is_main_process():
            return {}
        table = score_table(report.scores)
        results = {key: report.scores[key] for key in ("J", "F", "JF", "expressions", "version", "by_kind")}
    elif name in REFCOCO_DATASETS:
        results = evaluate_refcoco(model, cfg, amp)
        if not is_main_process():
            return {}
        table = refcoco_table(results)
    else:
        raise UserInputError(f"cannot evaluate dataset {name!r}; --eval supports "
                             f"{', '.join(A2D_DATASETS + YTVOS_DATASETS + MEVIS_DATASETS + REFCOCO_DATASETS)}")
    line = json.dumps(results)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(output_dir / f"eval_{name}.json", lambda f: f.write((line + "\n").encode()))
    print(table)
    print(line)
    return results


# --------------------------------------------------------------------------------- RefCOCO-family val


def evaluate_refcoco(model, cfg: dict, amp: str = "none") -> dict:
    """Scores of ``model`` on the val json of each set of ``data.refcoco_sets`` (null: refcoco, refcoco+, refcocog)
    under ``data_root``: ``{set: refcoco_scores(...)}`` on rank 0, {} on the others. Under torchrun every rank
    segments every world_size-th sample."""
    from datasets.refcoco import SETS, RefCOCOImages

    if amp == "fp16":
        raise UserInputError("the RefCOCO evaluation runs in fp32 or bf16: pass --amp none or --amp bf16")
    predictor = Predictor(model, cfg, next(model.parameters()).device, amp)
    results = {}
    sets = {name: RefCOCOImages(cfg["data_root"], name, "val") for name in cfg["data"]["refcoco_sets"] or SETS}
    for name, dataset in sets.items():  # every set's json and images were checked before any inference
        counts = []
        for index in tqdm(range(get_rank(), len(dataset), get_world_size()), desc=f"eval {name}", unit="image",
                          disable=not is_main_process()):
            image, sentence, mask = dataset[index]
            predicted = predictor.segment([image], [sentence])[0, 0]  # bool [H, W] at the image's size
            counts.append(intersection_union(predicted, mask))
        gathered = all_gather_objects(counts)
        if is_main_process():
            results[name] = refcoco_scores([count for rank_counts in gathered for count in rank_counts])
    return results if is_main_process() else {}


# ----------------------------------------------------------------------------------------- A2D / JHMDB


class KeepAnnotatedMask:
    """Wraps a dataset's transforms: keeps the annotated frame's mask at the original frame size as
    ``target["annotated_mask"]`` (bool ``[H, W]`` numpy), the ground truth of the protocol, before the test
    transform resizes the masks."""

    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, frames, target: dict, rng):
        mask = target["masks"][target["annotated_index"]].numpy().astype(bool)
        return self.transforms(frames, {**target, "annotated_mask": mask}, rng)


def annotated_frame_predictions(outputs: dict, targets: list[dict]) -> list[dict]:
    """Every query slot's prediction on each clip's annotated frame.

    Args:
        outputs: ``pred_logits`` [B, T, Q, 1] and ``pred_masks`` [B, T, Q, Hp, Wp] refined logits of every slot.
        targets: B targets with ``annotated_index``, ``image_id``, ``size`` (unpadded H, W) and ``orig_size``.
    Returns:
        B x Q dicts ``{"image_id", "score", "segmentation"}`` (RLE of the mask at the original size).
    """
    predictions = []
    for index, target in enumerate(targets):
        frame = target["annotated_index"]
        height, width = target["size"].tolist()
        scores = outputs["pred_logits"][index, frame, :, 0].float().sigmoid().tolist()  # [Q]
        logits = outputs["pred_masks"][index, frame, :, :height, :width].float()  # [Q, H, W] without the padding
        masks = (logits.sigmoid() > MASK_THRESHOLD).float()
        masks = F.interpolate(masks[None], size=tuple(target["orig_size"].tolist()), mode="nearest")[0]
        for slot_score, mask in zip(scores, masks.bool().cpu().numpy()):
            predictions.append({"image_id": target["image_id"], "score": slot_score,
                                "segmentation": mask_to_rle(mask)})
    return predictions


@torch.no_grad()
def predict_a2d_shard(model: torch.nn.Module, loader, device: torch.device, amp: str) -> tuple[list, list]:
    """``(predictions of every slot, [(image_id, ground-truth RLE)])`` of the samples of ``loader``."""
    predictions, ground_truth = [], []
    for samples, captions, targets in tqdm(loader, desc="eval", unit="batch", disable=not is_main_process()):
        with autocast(device, amp):
            outputs = model(samples.to(device), captions, refine_all_queries=True)
        predictions += annotated_frame_predictions(outputs, targets)
        ground_truth += [(target["image_id"], mask_to_rle(target["annotated_mask"])) for target in targets]
    return predictions, ground_truth


def evaluate_a2d(model: torch.nn.Module, cfg: dict, amp: str, pred_dir: Path):
    """A2D / JHMDB-Sentences metrics of ``model``: every rank predicts its shard, rank 0 writes all the predictions
    and the ground truth to ``pred_dir/predictions.json`` and ``pred_dir/ground_truth.json`` and scores them with
    ``metrics.protocols.score`` (``evaluate.py --protocol a2d`` on the same files gives the same numbers). Returns
    the ``Report`` on rank 0, None on the other ranks."""
    dataset = build_dataset(cfg["dataset"], "valid", cfg)
    dataset.transforms = KeepAnnotatedMask(dataset.transforms)
    shard = Subset(dataset, range(get_rank(), len(dataset), get_world_size()))
    device = next(model.parameters()).device
    loader = StopSafeDataLoader(shard, batch_size=cfg["train"]["batch_size"], shuffle=False,
                        num_workers=cfg["train"]["num_workers"], pin_memory=device.type == "cuda",
                        collate_fn=partial(collate_clips, size_divisibility=cfg["data"]["size_divisibility"]))
    predictions, ground_truth = predict_a2d_shard(model, loader, device, amp)
    gathered = all_gather_objects((predictions, ground_truth))
    if not is_main_process():
        return None
    predictions = [p for rank_predictions, _ in gathered for p in rank_predictions]
    coco_gt = build_coco_ground_truth(
        (image_id, rle_to_mask(rle)) for _, rank_gt in gathered for image_id, rle in rank_gt
    )
    pred_dir.mkdir(parents=True, exist_ok=True)
    for name, content in ((A2D_PREDICTIONS, predictions), (A2D_GROUND_TRUTH, coco_gt)):
        atomic_write(pred_dir / name, lambda f, content=content: f.write(json.dumps(content).encode()))
    return score(cfg["dataset"], pred_dir, pred_dir / A2D_GROUND_TRUTH)


# ------------------------------------------------------------------- Ref-YouTube-VOS layout with ground truth


def evaluate_ytvos(model: torch.nn.Module, cfg: dict, amp: str, pred_dir: Path):
    """Segment the valid split into ``pred_dir/Annotations`` and score it with the ``ytvos`` protocol: its
    ``Report`` on rank 0, None on the other ranks."""
    root = Path(cfg["data_root"])
    videos = read_meta_expressions(root, "valid")
    require_ground_truth(root, "valid", videos)  # before any inference: a split without masks cannot be scored
    if amp == "fp16":
        raise UserInputError("the Ref-YouTube-VOS-layout evaluation runs in fp32 or bf16: pass --amp none or "
                             "--amp bf16")
    predictor = Predictor(model, cfg, next(model.parameters()).device, amp)
    clip_len = cfg["inference"]["clip_len"] if cfg["dataset"] == "davis" else None  # the paper's passes
    mine = shard(videos, get_rank(), get_world_size())  # balanced by frame count, as in inference
    write_video_masks(predictor, root, "valid", mine, pred_dir / "Annotations", clip_len, progress=is_main_process())
    barrier()  # every rank's videos are written before rank 0 reads them
    if not is_main_process():
        return None
    return score("ytvos", pred_dir, root, "valid")


# ----------------------------------------------------------------------------------------------------- MeViS


def evaluate_mevis(model: torch.nn.Module, cfg: dict, amp: str, pred_dir: Path):
    """Segment MeViS valid_u into ``pred_dir/<video>/<exp_id>/<frame>.png`` and score it with the ``mevis``
    protocol: its ``Report`` on rank 0, None on the other ranks."""
    root = Path(cfg["data_root"])
    videos = read_mevis_meta(root, MEVIS_SPLIT)
    if not mask_dict_path(root, MEVIS_SPLIT).is_file():  # before any inference: without masks nothing is scored
        raise FileNotFoundError(f"{mask_dict_path(root, MEVIS_SPLIT)} not found: MeViS valid_u's ground truth")
    if amp == "fp16":
        raise UserInputError("the MeViS evaluation runs in fp32 or bf16: pass --amp none or --amp bf16")
    predictor = Predictor(model, cfg, next(model.parameters()).device, amp)
    mine = shard(videos, get_rank(), get_world_size())  # balanced by frame count, as in inference
    write_video_masks(predictor, root, MEVIS_SPLIT, mine, pred_dir, cfg["inference"]["clip_len"],
                      progress=is_main_process())
    barrier()  # every rank's videos are written before rank 0 reads them
    if not is_main_process():
        return None
    return score("mevis", pred_dir, root, MEVIS_SPLIT)


# ------------------------------------------------------------------------------------------ the one scorer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=SCORER_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS,
                        help="the benchmark's protocol: ytvos (per-expression J&F, Ref-YouTube-VOS layout with "
                             "ground truth), davis (DAVIS-2017 unsupervised, Ref-DAVIS17's reported number), mevis "
                             "(MeViS's eval_mevis.py), a2d / jhmdb (COCO mAP and IoU of the annotated frames)")
    parser.add_argument("--pred_dir", required=True,
                        help="the predictions: ytvos [Annotations/]<video>/<exp_id>/<frame>.png; davis one "
                             "annotator's <video>/<frame>.png or anno_0..anno_3 of them; mevis "
                             "<video>/<exp_id>/<frame>.png; a2d/jhmdb the folder holding predictions.json")
    parser.add_argument("--gt_root", required=True,
                        help="the ground truth: ytvos/mevis the dataset root; davis the DAVIS-2017 folder "
                             "(ImageSets/2017, Annotations_unsupervised/480p); a2d/jhmdb ground_truth.json or its "
                             "folder (main.py --eval writes both files to <output_dir>/eval_<dataset>)")
    parser.add_argument("--split", help="split to score (default: ytvos valid, davis val, mevis valid_u)")
    return parser


SCORER_DOC = """Score predictions with one benchmark's protocol (metrics/protocols.py): a table and, as the last line,
the JSON object that inference_ytvos.py --score, inference_davis.py --eval_only and inference_mevis.py --score print.

    python evaluate.py --protocol ytvos --pred_dir outputs/refshapes_valid --gt_root data/refshapes
    python evaluate.py --protocol davis --pred_dir outputs/davis_valid --gt_root data/DAVIS
    python evaluate.py --protocol mevis --pred_dir outputs/mevis_hcd/valid_u --gt_root data/mevis
    python evaluate.py --protocol a2d --pred_dir outputs/a2d_hcd/eval_a2d --gt_root outputs/a2d_hcd/eval_a2d

``main.py --eval`` segments and scores a model in one go (``run_evaluation``)."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.protocol == "mevis" and (args.split or DEFAULT_SPLITS["mevis"]) != "valid_u":
        parser.error("--protocol mevis needs a split with ground truth: --split valid_u (valid is scored by the "
                     "server)")
    score(args.protocol, args.pred_dir, args.gt_root, args.split).print()
    return 0


if __name__ == "__main__":
    exit_on_user_error(main)
