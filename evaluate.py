"""Evaluation of a model on the config's dataset: ``run_evaluation(model, cfg, args)``, called by ``main.py --eval``.

- **A2D-Sentences / JHMDB-Sentences** (``a2d``: its test subset; ``jhmdb``): every window is run with all query slots
  refined, and every slot is scored on the **annotated** frame of the window (``target["annotated_index"]``; the
  paper's code scores frame 0, see reference/hcd-architecture.md section 7 item 3): score = sigmoid of its class
  logit there, mask = sigmoid of its refined logits > 0.5, cropped to the unpadded size and resized
  (nearest-neighbour) to the original frame size, as MTTR and ReferFormer do. Ground truth is the annotated frame's
  mask at the original size. ``metrics.a2d`` gives mAP@[.5:.95], AP50 and AP75 over the predictions of
  **all** query slots (the MTTR / ReferFormer convention behind the published numbers: ``"map_over":
  "all_queries"``), and overall IoU, mean IoU and P@0.5..0.9 of the top-scoring slot per sample. The mAP of the
  top-scoring slot alone is reported beside it (``mAP_top1``, ``AP50_top1``, ``AP75_top1``; ReferFormer#39).
- **RefShapes / Ref-YouTube-VOS layout / converted Ref-DAVIS17** (``refshapes``, ``ytvos``, ``davis``): the
  ``valid`` split, which must have ground truth, is segmented with ``inference.predictor.Predictor`` (whole videos;
  ``inference.clip_len`` frames a pass for davis) into ``<output_dir>/eval_valid/Annotations/<video>/<exp_id>/
  <frame>.png`` and scored with ``metrics.ytvos.score_predictions``: J, F and J&F over expressions, and per
  expression kind.
- **MeViS** (``mevis``): the ``valid_u`` split is segmented the same way (``inference.clip_len`` frames a pass) into
  ``<output_dir>/eval_valid_u/<video>/<exp_id>/<frame>.png`` and scored with ``metrics.mevis.score_mevis`` as the
  official ``tools/eval_mevis.py`` scores it (the union of each expression's objects is its ground truth).
- **RefCOCO / RefCOCO+ / RefCOCOg** (``refcoco``): the val json of every set of ``data.refcoco_sets``, image by
  image with the top query's mask at the original size: oIoU, mIoU and P@0.5..0.9 per set (``metrics.refcoco``).

Under ``torchrun`` every rank evaluates its shard (every world_size-th sample or video) and rank 0 computes the
metrics. Rank 0 prints a table and, as the last line, the metrics as one JSON object, which it also writes to
``<output_dir>/eval_<dataset>.json``.
"""
import argparse
import json
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from datasets import build_dataset, read_meta_expressions
from datasets.mevis import mask_dict_path, read_mevis_meta
from datasets.ytvos import require_ground_truth
from engine import AMP_DTYPES
from inference_mevis import write_predictions
from inference_ytvos import score_table, segment_video_files
from inference.predictor import Predictor
from metrics.refcoco import evaluate_refcoco, refcoco_table
from metrics.a2d import PRECISION_THRESHOLDS, a2d_metrics, build_coco_ground_truth
from util.atomic_write import atomic_write, write_folder
from util.distributed import all_gather_objects, barrier, get_rank, get_world_size, is_main_process
from util.mask_rle import mask_to_rle, rle_to_mask
from metrics.mevis import score_mevis
from util.nested_tensor import collate_clips
from metrics.ytvos import score_predictions

A2D_DATASETS = ("a2d", "jhmdb")
YTVOS_DATASETS = ("refshapes", "ytvos", "davis")
MEVIS_DATASETS = ("mevis",)
REFCOCO_DATASETS = ("refcoco",)  # image-level oIoU / mIoU on the val jsons (metrics/refcoco.py)
MASK_THRESHOLD = 0.5  # the A2D / JHMDB protocol's threshold on the mask probability
PREDICTION_DIR = "eval_valid"
MEVIS_SPLIT = "valid_u"  # the MeViS split with ground truth


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
        results = evaluate_a2d(model, cfg, amp)
        if not is_main_process():
            return {}
        table = a2d_table(results, name)
    elif name in YTVOS_DATASETS:
        scores = evaluate_ytvos(model, cfg, amp, output_dir / PREDICTION_DIR)
        if not is_main_process():
            return {}
        table = score_table(scores)
        results = {key: scores[key] for key in ("J", "F", "JF", "by_kind")}
    elif name in MEVIS_DATASETS:
        scores = evaluate_mevis(model, cfg, amp, output_dir / f"eval_{MEVIS_SPLIT}")
        if not is_main_process():
            return {}
        table = score_table(scores)
        results = {key: scores[key] for key in ("J", "F", "JF", "expressions", "version", "by_kind")}
    elif name in REFCOCO_DATASETS:
        results = evaluate_refcoco(model, cfg, amp)
        if not is_main_process():
            return {}
        table = refcoco_table(results)
    else:
        raise ValueError(f"cannot evaluate dataset {name!r}; --eval supports "
                         f"{', '.join(A2D_DATASETS + YTVOS_DATASETS + MEVIS_DATASETS + REFCOCO_DATASETS)}")
    line = json.dumps(results)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(output_dir / f"eval_{name}.json", lambda f: f.write((line + "\n").encode()))
    print(table)
    print(line)
    return results


def autocast_context(device: torch.device, amp: str):
    """Autocast to the dtype of ``amp`` ("none": full precision) on ``device``'s type."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


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
        for score, mask in zip(scores, masks.bool().cpu().numpy()):
            predictions.append({"image_id": target["image_id"], "score": score, "segmentation": mask_to_rle(mask)})
    return predictions


@torch.no_grad()
def predict_a2d_shard(model: torch.nn.Module, loader, device: torch.device, amp: str) -> tuple[list, list]:
    """``(predictions of every slot, [(image_id, ground-truth RLE)])`` of the samples of ``loader``."""
    predictions, ground_truth = [], []
    for samples, captions, targets in tqdm(loader, desc="eval", unit="batch", disable=not is_main_process()):
        with autocast_context(device, amp):
            outputs = model(samples.to(device), captions, refine_all_queries=True)
        predictions += annotated_frame_predictions(outputs, targets)
        ground_truth += [(target["image_id"], mask_to_rle(target["annotated_mask"])) for target in targets]
    return predictions, ground_truth


def top1_predictions(predictions: list[dict]) -> list[dict]:
    """The highest-scoring prediction per image_id (on a tie the later one, as ``a2d_metrics`` picks it)."""
    best = {}
    for prediction in predictions:
        current = best.get(prediction["image_id"])
        if current is None or prediction["score"] >= current["score"]:
            best[prediction["image_id"]] = prediction
    return list(best.values())


def evaluate_a2d(model: torch.nn.Module, cfg: dict, amp: str) -> dict:
    """A2D / JHMDB-Sentences metrics of ``model`` (rank 0; {} on the other ranks)."""
    dataset = build_dataset(cfg["dataset"], "valid", cfg)
    dataset.transforms = KeepAnnotatedMask(dataset.transforms)
    shard = Subset(dataset, range(get_rank(), len(dataset), get_world_size()))
    device = next(model.parameters()).device
    loader = DataLoader(shard, batch_size=cfg["train"]["batch_size"], shuffle=False,
                        num_workers=cfg["train"]["num_workers"], pin_memory=device.type == "cuda",
                        collate_fn=partial(collate_clips, size_divisibility=cfg["data"]["size_divisibility"]))
    predictions, ground_truth = predict_a2d_shard(model, loader, device, amp)
    gathered = all_gather_objects((predictions, ground_truth))
    if not is_main_process():
        return {}
    predictions = [p for rank_predictions, _ in gathered for p in rank_predictions]
    coco_gt = build_coco_ground_truth(
        (image_id, rle_to_mask(rle)) for _, rank_gt in gathered for image_id, rle in rank_gt
    )
    results = a2d_metrics(predictions, coco_gt)
    top1 = a2d_metrics(top1_predictions(predictions), coco_gt)
    results.update({f"{key}_top1": top1[key] for key in ("mAP", "AP50", "AP75")})
    results["num_samples"] = len(coco_gt["images"])
    results["map_over"] = "all_queries"
    return results


def a2d_table(results: dict, name: str) -> str:
    title = {"a2d": "A2D-Sentences test", "jhmdb": "JHMDB-Sentences"}[name]
    keys = (["mAP", "AP50", "AP75", "overall_iou", "mean_iou"] + [f"P@{k}" for k in PRECISION_THRESHOLDS]
            + ["mAP_top1", "AP50_top1", "AP75_top1"])
    lines = [f"{title}: {results['num_samples']} samples, annotated frame of each window; mAP over the predictions "
             "of all query slots (MTTR/ReferFormer convention), *_top1 over the top-scoring slot only"]
    lines += [f"{key:<12} {100 * results[key]:6.2f}" for key in keys]
    return "\n".join(lines)


# ------------------------------------------------------------------- Ref-YouTube-VOS layout with ground truth


def evaluate_ytvos(model: torch.nn.Module, cfg: dict, amp: str, pred_dir: Path) -> dict:
    """Segment the valid split into ``pred_dir/Annotations`` and score it: ``metrics.ytvos.score_predictions``
    result on rank 0, {} on the other ranks."""
    root = Path(cfg["data_root"])
    videos = read_meta_expressions(root, "valid")
    require_ground_truth(root, "valid", videos)  # before any inference: a split without masks cannot be scored
    if amp == "fp16":
        raise ValueError("the Ref-YouTube-VOS-layout evaluation runs in fp32 or bf16: pass --amp none or --amp bf16")
    predictor = Predictor(model, cfg, next(model.parameters()).device, amp)
    clip_len = cfg["inference"]["clip_len"] if cfg["dataset"] == "davis" else None  # the paper's passes
    shard = sorted(videos)[get_rank()::get_world_size()]
    for video in tqdm(shard, desc="eval", unit="video", disable=not is_main_process()):
        write_folder(pred_dir / "Annotations" / video,
                     segment_video_files(predictor, root, "valid", video, videos[video], clip_len))
    barrier()  # every rank's videos are written before rank 0 reads them
    if not is_main_process():
        return {}
    return score_predictions(pred_dir, root, "valid")


# ----------------------------------------------------------------------------------------------------- MeViS


def evaluate_mevis(model: torch.nn.Module, cfg: dict, amp: str, pred_dir: Path) -> dict:
    """Segment MeViS valid_u into ``pred_dir/<video>/<exp_id>/<frame>.png`` and score it:
    ``metrics.mevis.score_mevis`` result on rank 0, {} on the other ranks."""
    root = Path(cfg["data_root"])
    videos = read_mevis_meta(root, MEVIS_SPLIT)
    if not mask_dict_path(root, MEVIS_SPLIT).is_file():  # before any inference: without masks nothing is scored
        raise FileNotFoundError(f"{mask_dict_path(root, MEVIS_SPLIT)} not found: MeViS valid_u's ground truth")
    if amp == "fp16":
        raise ValueError("the MeViS evaluation runs in fp32 or bf16: pass --amp none or --amp bf16")
    predictor = Predictor(model, cfg, next(model.parameters()).device, amp)
    shard = {video: videos[video] for video in sorted(videos)[get_rank()::get_world_size()]}
    write_predictions(predictor, root, MEVIS_SPLIT, shard, pred_dir, cfg["inference"]["clip_len"],
                      progress=is_main_process())
    barrier()  # every rank's videos are written before rank 0 reads them
    if not is_main_process():
        return {}
    return score_mevis(pred_dir, root, MEVIS_SPLIT)
