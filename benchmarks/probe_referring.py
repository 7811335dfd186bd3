"""The probe ladder (issue 11): how much of what a RefShapes sentence names survives each stage of HCD.

Fit on the train videos of a RefShapes dataset, report on its valid videos:

1. **stages**: held-out accuracy of linear probes (``benchmarks/linear_probe.py``) predicting the referred object's
   colour, shape, size and motion (derived from pixels, ``benchmarks/probe_labels.py``) from the object's
   mask-pooled features of the model's input frames (``frames``, the reference: colour is all they can give), the
   VAE latents (``vae``), the six UNet taps (``unet_f0`` .. ``unet_f5``), the three PairProjection outputs
   (``backbone_l0`` .. ``l2``), the transformer encoder's output levels (``memory_l0`` ..), and the last decoder
   layer's query of the slot whose low-res mask overlaps the object best (``decoder_query``, averaged over the
   frames that show it). A map is pooled by averaging it over the object's mask area-resized to the map, over
   all frames, so shape, size and motion survive pooling only where the features themselves encode them. From
   the UNet on, features depend on the sentence: an object's features are those computed with the sentences
   that refer to it, averaged over them. ``chance``: always answering the train objects' most frequent label.
2. **sentences**: held-out accuracy of linear probes on the pooled sentence features predicting the colour, shape
   and motion word a sentence names (sentences that name one), and the mean cosine similarity of pairs of valid
   sentences naming the same word (``cos_within``) and different words (``cos_between``), averaged over the three
   attributes. Features: CLIP-text tokens (``FrozenEncoders.encode_text``) averaged over the sentence's tokens,
   RoBERTa words (``TextEncoder`` output) averaged over the words, and the content queries (``QueryConditioner``
   output) of all slots concatenated. ``chance_sentences``: the majority word of the train sentences.
3. **end** (valid): J of the slot the model selects (``models.hcd.best_query``), of the best slot and of a
   random object of the video (its expectation: the mean over the video's objects of the J of that object's
   ground-truth mask); the spread of a slot's frame-averaged score between the sentences of a video (std over
   them, averaged over slots and videos with two sentences or more) and between the slots of one sentence (std
   over slots, averaged over sentences). J is the mean over frames of the per-frame IoU at the original size.

Each video runs through the model once, whole (all its frames as one clip, as inference does when the video is no
longer than ``inference.clip_len``), with all its sentences; in valid videos every slot is refined
(``refine_all_queries``). Forward hooks on the backbone's UNet feature extractor and pair projection, the
transformer, the text encoder and the query conditioner keep the stages, so the model runs unchanged and extra
outputs do not matter. Without ``--checkpoint`` the untrained model is probed: the frozen pretrained stack of
``--weights`` and the trainable parts at their initialisation seeded by ``--seed``.

    python -m benchmarks.probe_referring --weights weight_tiny --data_root data/refshapes --max_videos 20
    python -m benchmarks.probe_referring --checkpoint outputs/demo/last.pth --weights weight_tiny \\
        --data_root data/refshapes --json      # last line: {"stages": ..., "chance": ..., "sentences": ..., ...}
"""
import argparse
import copy
import json
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]

from benchmarks.linear_probe import cosine_within_between, majority_accuracy, probe_accuracy
from benchmarks.probe_labels import (OBJECT_ATTRIBUTES, SENTENCE_ATTRIBUTES, object_labels,
                                     sentence_labels)
from datasets.errors import DatasetFormatError
from datasets.ytvos import (absent_object_error, exp_id_order, frame_size, load_frames, load_image,
                            read_meta_expressions)
from inference.predictor import Predictor, check_sentences
from metrics.jf import jaccard
from models import build_model
from models.hcd import best_query
from models.pretrained import load_pretrained
from util.checkpoint import load_checkpoint
from util.cli import exit_on_user_error
from util.config import load_config
from util.cpu_threads import ThreadGovernor
from util.nested_tensor import nested_tensor_from_videos

CONFIG = REPO / "configs" / "refshapes_tiny.yaml"
SPLITS = ("train", "valid")
END_KEYS = ("selected_J", "best_slot_J", "random_object_J")

Sample = tuple[dict[str, str | None], dict[str, torch.Tensor]]  # (labels, {feature name: [D]})


@dataclass
class VideoProbe:
    """What one video gives the ladder.

    objects:   per object, its labels and its pooled stage features
    sentences: per expression, the words it names and its pooled sentence features
    jaccards:  per expression, the ``END_KEYS`` J values (when scored)
    score_std: {"between_sentences": float or None (one sentence), "between_slots": float}
    """
    objects: list[Sample]
    sentences: list[Sample]
    jaccards: list[dict[str, float]]
    score_std: dict[str, float | None]


def _stage_hooks(model: torch.nn.Module) -> list:
    """(module, pick) pairs: pick(inputs, output) -> the stages that module's forward pass gives."""
    return [
        (model.backbone.unet_features, lambda inputs, out: {"latents": inputs[0], "taps": out}),
        (model.backbone.projection, lambda inputs, out: {"levels": out}),
        (model.transformer, lambda inputs, out: {"memory": out["memory"], "hs": out["hs"]}),
        (model.text_encoder, lambda inputs, out: {"words": out[0], "word_padding": out[1]}),
        (model.query_conditioner, lambda inputs, out: {"content": out}),
    ]


@contextmanager
def recorded_stages(model: torch.nn.Module):
    """Keep the stages of the forward passes run inside the block (one clip, K captions, N = K·T frames):

    latents [1, 4, T, h, w]; taps: f0..f5 [N, C_i, h_i, w_i]; levels: 3 x [N, C_l, h_l, w_l]; memory: per
    transformer level [N, C, h_l, w_l]; hs [layers, N, Q, C]; words [K, L, C]; word_padding [K, L] (True = pad);
    content [K, Q, C].
    """
    stages = {}
    handles = [module.register_forward_hook(lambda _module, inputs, out, pick=pick: stages.update(pick(inputs, out)))
               for module, pick in _stage_hooks(model)]
    try:
        yield stages
    finally:
        for handle in handles:
            handle.remove()


def masked_average(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """features [T, C, h, w], masks [T, H, W] in [0, 1] -> [C]: the feature average weighted by the share of each
    map cell that the mask covers (area resize to h x w), over all frames."""
    weights = F.interpolate(masks[:, None].float(), size=features.shape[-2:], mode="area")  # [T, 1, h, w]
    return (features * weights).sum(dim=(0, 2, 3)) / weights.sum()


def input_masks(masks: torch.Tensor, resized: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
    """Object masks at the original size [T, H, W] bool -> on the model's input [T, Hp, Wp] float: resized like
    the frames (nearest) to ``resized``, zero-padded at the bottom and right to ``padded``."""
    resized_masks = F.interpolate(masks[:, None].float(), size=resized, mode="nearest")[:, 0]
    return F.pad(resized_masks, (0, padded[1] - resized[1], 0, padded[0] - resized[0]))


def slot_jaccards(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """predicted [T, Q, H, W] bool, target [T, H, W] bool -> [Q] J of each slot (mean over frames)."""
    return np.array([jaccard(predicted[:, slot], target).mean() for slot in range(predicted.shape[1])])


def stage_maps(frames: torch.Tensor, stages: dict, rows: slice) -> dict[str, torch.Tensor]:
    """The feature maps [T, C, h, w] of one caption (its ``rows`` of the K·T frames), by stage name, after the
    model's input ``frames`` [T, 3, Hp, Wp]."""
    maps = {"frames": frames, "vae": rearrange(stages["latents"][0], "c t h w -> t c h w")}
    maps |= {f"unet_f{i}": tap[rows] for i, tap in enumerate(stages["taps"])}
    maps |= {f"backbone_l{i}": level[rows] for i, level in enumerate(stages["levels"])}
    maps |= {f"memory_l{i}": level[rows] for i, level in enumerate(stages["memory"])}
    return maps


def object_features(frames: torch.Tensor, stages: dict, low_masks: torch.Tensor, rows: slice,
                    target: torch.Tensor) -> dict:
    """The pooled stage features [D] of one caption's target.

    frames: the model's input [T, 3, Hp, Wp]; low_masks: the caption's low-res slot logits [T, Q, Hp/2, Wp/2];
    target: its mask on the input [T, Hp, Wp].
    """
    features = {name: masked_average(value, target) for name, value in stage_maps(frames, stages, rows).items()}
    target_low = F.interpolate(target[:, None], size=low_masks.shape[-2:], mode="area")[:, 0] > 0.5
    slot = int(np.argmax(slot_jaccards((low_masks > 0).cpu().numpy(), target_low.cpu().numpy())))
    visible = target.flatten(1).any(dim=1)
    features["decoder_query"] = stages["hs"][-1][rows][visible, slot].mean(dim=0)
    return features


def sentence_features(model: torch.nn.Module, stages: dict, captions: list[str]) -> dict[str, torch.Tensor]:
    """Pooled sentence features [K, D] by name: CLIP-text tokens and RoBERTa words averaged over the sentence's
    tokens, the content queries of all slots concatenated."""
    frozen = model.backbone.frozen
    tokens = frozen.encode_text(captions)  # [K, 77, Dc]
    attention = frozen.clip_tokenizer(captions, padding="max_length", max_length=frozen.text_length,
                                      truncation=True, return_tensors="pt").attention_mask.to(tokens)  # [K, 77]
    words = (~stages["word_padding"]).to(stages["words"])  # [K, L]
    return {
        "clip_text": (tokens * attention[..., None]).sum(1) / attention.sum(1, keepdim=True),
        "roberta": (stages["words"] * words[..., None]).sum(1) / words.sum(1, keepdim=True),
        "content_query": rearrange(stages["content"], "k q c -> k (q c)"),
    }


def read_video(root: Path, split: str, video: str, frame_names: list[str]):
    """The frames (RGB PIL images) and object ids [T, H, W] (palette PNG indices, 0 = background) of a video."""
    frames = load_frames(root, split, video, frame_names)
    size = frame_size(frames, video, frame_names)
    folder = root / split / "Annotations" / video
    ids = np.stack([np.asarray(load_image(folder / f"{name}.png", video, name, mode="")) for name in frame_names])
    if ids.shape[1:] != size:
        raise DatasetFormatError(f"video {video!r}: the annotations under {folder} are {ids.shape[2]}x{ids.shape[1]} "
                                 f"(WxH) but the frames are {size[1]}x{size[0]}")
    return frames, ids


def average_by_object(targets: list[int], features: list[dict]) -> dict[int, dict[str, torch.Tensor]]:
    """Per target object id, the mean of the feature dicts of the captions that refer to it."""
    averaged = {}
    for obj_id in sorted(set(targets)):
        mine = [f for t, f in zip(targets, features) if t == obj_id]
        averaged[obj_id] = {name: torch.stack([f[name] for f in mine]).mean(0) for name in mine[0]}
    return averaged


def slot_masks(outputs: dict, size: tuple[int, int], resized: tuple[int, int], threshold: float) -> np.ndarray:
    """Every slot's refined mask at the original size, as ``inference.predictor`` thresholds it.

    outputs: the model's outputs for K captions with every slot refined (``pred_masks`` [K, T, Q, Hp, Wp]); size: the
    original (H, W); resized: the (h, w) of the frames before padding. Logits are cropped to ``resized``, upsampled
    bilinearly to H x W and thresholded -> bool [K, T, Q, H, W].
    """
    logits = outputs["pred_masks"][..., :resized[0], :resized[1]].float()  # [K, T, Q, h, w]
    probabilities = F.interpolate(logits.flatten(0, 1), size=size, mode="bilinear",
                                  align_corners=False).sigmoid().unflatten(0, logits.shape[:2])
    return (probabilities > threshold).cpu().numpy()


def end_jaccards(predicted: np.ndarray, selected: list[int], ids: np.ndarray,
                 targets: list[int]) -> list[dict[str, float]]:
    """Per caption the ``END_KEYS`` J values: predicted [K, T, Q, H, W] bool (``slot_masks``), the K slots the
    model selects (``models.hcd.best_query``), the object ids [T, H, W] and the K captions' object ids."""
    objects = [ids == obj_id for obj_id in np.unique(ids) if obj_id != 0]
    rows = []
    for k, obj_id in enumerate(targets):
        target = ids == obj_id
        slots = slot_jaccards(predicted[k], target)
        rows.append({"selected_J": float(slots[selected[k]]), "best_slot_J": float(slots.max()),
                     "random_object_J": float(np.mean([jaccard(other, target).mean() for other in objects]))})
    return rows


def score_spreads(pred_logits: torch.Tensor) -> dict[str, float | None]:
    """pred_logits [K, T, Q, 1] of one video's K captions -> the std of a slot's frame-averaged score between the
    captions (mean over slots; None for one caption) and between the slots of a caption (mean over captions)."""
    scores = pred_logits.sigmoid().mean(dim=1)[..., 0]  # [K, Q]
    return {"between_sentences": scores.std(0, correction=0).mean().item() if len(scores) > 1 else None,
            "between_slots": scores.std(1, correction=0).mean().item()}


@torch.inference_mode()
def probe_video(predictor: Predictor, root: Path, split: str, video: str, entry: dict, score: bool) -> VideoProbe:
    """Run one video with all its sentences and pool what the ladder needs (module docstring); ``score``: refine
    every slot and measure the J values (``jaccards`` stays empty otherwise)."""
    model, device = predictor.model, predictor.device
    frames, ids = read_video(root, split, video, entry["frames"])
    labels = object_labels(np.stack([np.asarray(frame) for frame in frames]), ids)
    expressions = [entry["expressions"][e] for e in sorted(entry["expressions"], key=exp_id_order)]
    captions = check_sentences([e["exp"] for e in expressions])
    targets = [int(e["obj_id"]) for e in expressions]
    absent = sorted(set(targets) - set(labels))
    if absent:
        raise absent_object_error(root, split, video, absent[0])

    clip, _ = predictor.transforms(frames, {}, random.Random(0))  # [T, 3, h, w]; the test transforms draw nothing
    samples = nested_tensor_from_videos([clip], predictor.size_divisibility).to(device)
    with recorded_stages(model) as stages:
        outputs = model(samples, captions, refine_all_queries=score)
    num_frames, resized, padded = len(frames), tuple(clip.shape[-2:]), tuple(samples.tensors.shape[-2:])
    per_caption = []
    for k, obj_id in enumerate(targets):
        on_input = input_masks(torch.from_numpy(ids == obj_id), resized, padded).to(device)
        rows = slice(k * num_frames, (k + 1) * num_frames)
        features = object_features(samples.tensors[0], stages, outputs["pred_masks_low"][k], rows, on_input)
        per_caption.append({name: value.float().cpu() for name, value in features.items()})

    sentences = {name: value.float().cpu() for name, value in sentence_features(model, stages, captions).items()}
    return VideoProbe(
        objects=[(labels[obj_id].as_dict(), features)
                 for obj_id, features in average_by_object(targets, per_caption).items()],
        sentences=[(sentence_labels(caption), {name: value[k] for name, value in sentences.items()})
                   for k, caption in enumerate(captions)],
        jaccards=end_jaccards(slot_masks(outputs, ids.shape[1:], resized, predictor.threshold),
                              best_query(outputs["pred_logits"]).tolist(), ids, targets) if score else [],
        score_std=score_spreads(outputs["pred_logits"]),
    )


def _pairs(samples: list[Sample], feature: str, attribute: str) -> tuple[torch.Tensor, list[str]]:
    """The features [N, D] and labels of the samples that have a label for ``attribute``."""
    kept = [(features[feature], labels[attribute]) for labels, features in samples if labels[attribute] is not None]
    if not kept:
        return torch.empty(0, 0), []
    return torch.stack([x for x, _ in kept]), [y for _, y in kept]


def probe_table(fit: list[Sample], held: list[Sample], attributes: tuple[str, ...]) -> dict[str, dict]:
    """{feature: {attribute: held-out probe accuracy}} for every feature the samples carry."""
    table = {}
    for feature in fit[0][1]:
        table[feature] = {a: probe_accuracy(*_pairs(fit, feature, a), *_pairs(held, feature, a)) for a in attributes}
    return table


def labels_of(samples: list[Sample], attribute: str) -> list[str]:
    """The ``attribute`` labels of the samples that have one."""
    return [labels[attribute] for labels, _ in samples if labels[attribute] is not None]


def chance_table(fit: list[Sample], held: list[Sample], attributes: tuple[str, ...]) -> dict[str, float | None]:
    """{attribute: held-out accuracy of always answering the fitting set's most frequent label}."""
    return {a: majority_accuracy(labels_of(fit, a), labels_of(held, a)) for a in attributes}


def sentence_table(fit: list[Sample], held: list[Sample]) -> dict[str, dict]:
    """``probe_table`` of the sentence features plus ``cos_within`` / ``cos_between`` of the held-out sentences,
    each the mean over ``SENTENCE_ATTRIBUTES`` (of those with pairs)."""
    table = probe_table(fit, held, SENTENCE_ATTRIBUTES)
    for feature, row in table.items():
        pairs = [cosine_within_between(*_pairs(held, feature, a)) for a in SENTENCE_ATTRIBUTES]
        for index, key in enumerate(("cos_within", "cos_between")):
            values = [pair[index] for pair in pairs if pair[index] is not None]
            row[key] = float(np.mean(values)) if values else None
    return table


def end_summary(probes: list[VideoProbe]) -> dict[str, float | None]:
    """Mean J values over the expressions and mean score spreads (module docstring, 3.)."""
    jaccards = [j for probe in probes for j in probe.jaccards]
    summary = {key: float(np.mean([j[key] for j in jaccards])) for key in END_KEYS}
    for key in ("between_sentences", "between_slots"):
        values = [p.score_std[key] for p in probes if p.score_std[key] is not None]
        summary[f"score_std_{key}"] = float(np.mean(values)) if values else None
    return summary


def format_table(title: str, rows: dict[str, dict[str, float | None]]) -> str:
    """A fixed-width table: one row per key of ``rows``, one column per key of its first row ('-': none)."""
    columns = list(next(iter(rows.values())))
    width = max(len(name) for name in rows) + 2
    lines = [title, f"{'':<{width}}" + "".join(f"{c:>13}" for c in columns)]
    for name, row in rows.items():
        cells = "".join(f"{'-' if row.get(c) is None else f'{row[c]:.3f}':>13}" for c in columns)
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


def fill_missing(cfg: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Add to ``cfg``, in place and recursively, every key of ``defaults`` it lacks -> the dotted keys added."""
    added = []
    for key, value in defaults.items():
        if key not in cfg:
            cfg[key] = copy.deepcopy(value)
            added.append(prefix + key)
        elif isinstance(value, dict) and isinstance(cfg[key], dict):
            added += fill_missing(cfg[key], value, f"{prefix}{key}.")
    return added


def load_predictor(args: argparse.Namespace) -> Predictor:
    """The trained model of ``--checkpoint``, or the untrained model of ``--config`` seeded by ``--seed``.

    A checkpoint's config written before the code grew an option lacks its key; such keys take the value of
    ``--config``, and a note on stderr names them.
    """
    torch.manual_seed(args.seed)
    defaults = load_config(args.config)
    if args.checkpoint is None:
        cfg, state = defaults, None
    else:
        checkpoint = load_checkpoint(args.checkpoint)
        cfg, state = checkpoint["config"], checkpoint["model"]
        added = fill_missing(cfg, defaults)
        if added:
            print(f"note: {args.checkpoint}'s config lacks {', '.join(added)}; taken from {args.config}",
                  file=sys.stderr)
    weights = cfg["weights"] if args.weights is None else str(args.weights)
    if state is not None:
        return Predictor.from_state(cfg, state, weights, device=args.device)
    cfg["weights"] = weights
    model, _ = build_model(cfg, load_pretrained(weights))
    return Predictor(model, cfg, args.device)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a main.py checkpoint (.pth); omitted: probe the untrained model of --config")
    parser.add_argument("--weights", type=Path, default=None,
                        help="the pretrained components' folder (default: the one the checkpoint's or config's "
                             "'weights' names)")
    parser.add_argument("--data_root", type=Path, required=True,
                        help="a RefShapes dataset in the Ref-YouTube-VOS layout (train and valid with Annotations)")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="config of the untrained model; with --checkpoint, the values of keys its config lacks "
                             "(default configs/refshapes_tiny.yaml)")
    parser.add_argument("--max_videos", type=int, default=None,
                        help="use the first N videos (by name) of each split (default: all)")
    parser.add_argument("--device", default="cpu", help="where the model runs (default cpu; e.g. cuda)")
    parser.add_argument("--seed", type=int, default=0,
                        help="torch seed set before building the model: the untrained trainable init (default 0)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line at the end")
    args = parser.parse_args(argv)
    if args.max_videos is not None and args.max_videos < 1:
        parser.error(f"--max_videos must be >= 1, got {args.max_videos}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    governor = ThreadGovernor()  # on a shared CPU, threads beyond the free cores stall every parallel region
    predictor = load_predictor(args)
    probes = {split: [] for split in SPLITS}
    for split in SPLITS:
        videos = read_meta_expressions(args.data_root, split)
        for name in sorted(videos)[:args.max_videos]:
            governor.update()
            probes[split].append(probe_video(predictor, args.data_root, split, name, videos[name],
                                             score=split == "valid"))
    objects = {split: [o for probe in probes[split] for o in probe.objects] for split in SPLITS}
    sentences = {split: [s for probe in probes[split] for s in probe.sentences] for split in SPLITS}
    results = {
        "stages": probe_table(objects["train"], objects["valid"], OBJECT_ATTRIBUTES),
        "chance": chance_table(objects["train"], objects["valid"], OBJECT_ATTRIBUTES),
        "sentences": sentence_table(sentences["train"], sentences["valid"]),
        "chance_sentences": chance_table(sentences["train"], sentences["valid"], SENTENCE_ATTRIBUTES),
        "end": end_summary(probes["valid"]),
        "videos": {split: len(probes[split]) for split in SPLITS},
        "objects": {split: len(objects[split]) for split in SPLITS},
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(format_table("Object attributes from mask-pooled features (valid accuracy)",
                       {**results["stages"], "chance": results["chance"]}))
    print()
    print(format_table("What the sentence features separate (valid accuracy; cosine of valid sentence pairs)",
                       {**results["sentences"], "chance": results["chance_sentences"]}))
    print()
    print("End result on valid")
    print("\n".join(f"  {key:<30}{'-' if value is None else f'{value:.4f}'}" for key, value in results["end"].items()))
    print(f"\n{results['videos']['train']} train / {results['videos']['valid']} valid videos "
          f"({results['objects']['train']} / {results['objects']['valid']} objects), {results['seconds']} s")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    exit_on_user_error(main)
