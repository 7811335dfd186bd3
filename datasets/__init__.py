"""Datasets: ``build_dataset(name, split, cfg)`` and the Ref-YTVOS readers used by the inference scripts.

A sample is ``(frames [T, 3, H, W], target)`` with ImageNet-normalised frames and the target keys
"masks" [T, H, W] float {0, 1}, "boxes" [T, 4] normalised cxcywh (zero where absent), "valid" [T] long,
"caption", "orig_size" [2], "size" [2], "frames" (names), "video", "exp_id", "kind" (A2D / JHMDB add
"annotated_index" and "image_id"; MeViS's ``valid`` split, which has no masks, gives only the caption, sizes and
names). Batch them with ``util.nested_tensor.collate_clips``.
"""
from torch.utils.data import Dataset

from datasets.a2d import A2DSentences
from datasets.jhmdb import JHMDBSentences
from datasets.mevis import MeViSClips, MeViSVideos
from datasets.refcoco import AffineRange, MixedClips, RefCOCOClips, joint_counts
from datasets.transforms_video import make_test_transforms, make_train_transforms
from datasets.ytvos import YTVOSClips, YTVOSVideos, load_frames, read_meta_expressions
from util.errors import UserInputError

__all__ = ["build_dataset", "load_frames", "read_meta_expressions"]

NAMES = ("ytvos", "refshapes", "davis", "a2d", "jhmdb", "mevis", "refcoco", "ytvos_refcoco")
MEVIS_SPLITS = ("train", "valid_u", "valid")
SPLITS = {"train": "train", "valid": "valid", "val": "valid"}


def build_dataset(name: str, split: str, cfg: dict) -> Dataset:
    """The dataset ``name`` in {ytvos, refshapes, davis, a2d, jhmdb, mevis, refcoco, ytvos_refcoco} for ``split``
    "train" or "valid"/"val" (mevis: "train", "valid_u" or "valid", its split folders; refcoco and ytvos_refcoco:
    "train" only, see ``build_refcoco``).

    Training splits give augmented clips (``make_train_transforms``); "valid" gives evaluation samples
    with the test transform: whole videos per expression for the Ref-YTVOS layout (ytvos, refshapes and
    converted Ref-DAVIS17; the split needs ground truth), the test windows for A2D and JHMDB, whole videos per
    expression for MeViS (``valid_u`` with the union masks, ``valid`` without). Reads
    ``cfg["data_root"]``, ``cfg["data"][num_frames, max_skip, reverse_prob, train_scales, max_size,
    test_size]`` (Ref-YTVOS-layout training also ``sentences_per_clip``) and, for the splits that draw random
    numbers, ``cfg["seed"]``.
    """
    if name not in NAMES:
        raise UserInputError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    if name == "mevis":
        return build_mevis(split, cfg)
    if name in ("refcoco", "ytvos_refcoco"):
        return build_refcoco(name, split, cfg)
    if split not in SPLITS:
        raise UserInputError(f"unknown split {split!r}; choose 'train' or 'valid' (alias 'val')")
    split, root, data = SPLITS[split], cfg["data_root"], cfg["data"]
    test_transforms = make_test_transforms(data["test_size"], data["max_size"])
    if name == "jhmdb":
        if split == "train":
            raise UserInputError("JHMDB-Sentences is for evaluation only (train on a2d); use split 'valid'")
        return JHMDBSentences(root, data["num_frames"], test_transforms)
    if name == "a2d":
        if split == "train":
            return A2DSentences(root, "train", data["num_frames"], make_train_transforms(cfg), cfg["seed"])
        return A2DSentences(root, "test", data["num_frames"], test_transforms, cfg["seed"])
    if split == "valid":
        return YTVOSVideos(root, "valid", test_transforms)
    if name == "refshapes" and data["reverse_prob"] > 0:
        raise UserInputError(
            "RefShapes expressions describe motion, which reversed clips would contradict; "
            "set data.reverse_prob: 0 for refshapes"
        )
    return YTVOSClips(
        root, "train", data["num_frames"], data["max_skip"], data["reverse_prob"], make_train_transforms(cfg),
        cfg["seed"], sentences_per_clip=data["sentences_per_clip"],
    )


def build_mevis(split: str, cfg: dict) -> Dataset:
    """MeViS ``train`` clips (the Ref-YTVOS sampler and augmentation) or ``valid_u`` / ``valid`` whole videos."""
    root, data = cfg["data_root"], cfg["data"]
    if split == "train":
        return MeViSClips(root, "train", data["num_frames"], data["max_skip"], data["reverse_prob"],
                          make_train_transforms(cfg), cfg["seed"], sentences_per_clip=data["sentences_per_clip"])
    if split in MEVIS_SPLITS:
        return MeViSVideos(root, split, make_test_transforms(data["test_size"], data["max_size"]))
    raise UserInputError(f"unknown MeViS split {split!r}; choose one of {', '.join(MEVIS_SPLITS)} (valid_u has ground "
                         "truth, valid is scored by the server)")


def build_refcoco(name: str, split: str, cfg: dict) -> Dataset:
    """RefCOCO-family training pseudo-clips (``refcoco``: the sets ``data.refcoco_sets`` under ``data_root``), or
    the joint dataset (``ytvos_refcoco``: the Ref-YouTube-VOS clips of ``data_root`` and RefCOCO pseudo-clips of
    ``data.refcoco_root``, these ``data.refcoco_fraction`` of every epoch). Their evaluation (oIoU / mIoU on the
    val jsons) is ``evaluate.py``'s, through ``metrics.refcoco``."""
    if split != "train":
        raise UserInputError(f"{name} gives training clips only; RefCOCO val is scored image by image by main.py "
                             "--eval (metrics/refcoco.py)")
    data, seed = cfg["data"], cfg["seed"]
    if data["sentences_per_clip"] != 1:
        raise UserInputError(f"{name}: RefCOCO samples have one sentence each; set data.sentences_per_clip: 1")
    affine = AffineRange(data["affine_degrees"], data["affine_translate"], data["affine_scale"], data["affine_shear"])
    refcoco_root = cfg["data_root"] if name == "refcoco" else data["refcoco_root"]
    refcoco = RefCOCOClips(refcoco_root, data["refcoco_sets"], data["num_frames"], make_train_transforms(cfg), affine,
                           seed)
    if name == "refcoco":
        return refcoco
    ytvos = YTVOSClips(cfg["data_root"], "train", data["num_frames"], data["max_skip"], data["reverse_prob"],
                       make_train_transforms(cfg), seed)
    return MixedClips([ytvos, refcoco], joint_counts(len(ytvos), len(refcoco), data["refcoco_fraction"]), seed)
