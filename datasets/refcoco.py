"""RefCOCO / RefCOCO+ / RefCOCOg as pseudo-videos (image pretraining, the ReferFormer / SgMg recipe), and the joint
dataset that mixes them with Ref-YouTube-VOS clips.

Layout (the COCO-format referring jsons of ReferFormer's RefCOCO setup; the pickled ``refs(unc).p`` is not read)::

    <root>/train2014/COCO_train2014_<id:012d>.jpg             every RefCOCO-family image comes from COCO train2014
    <root>/<set>/instances_<set>_<split>.json                  set in refcoco, refcoco+, refcocog; split train / val

A json is COCO detection format in which **every "image" entry is one referring sample** (one sentence about one
object): ``images[]`` with ``id`` (unique per sample), ``file_name`` (the COCO image), ``caption`` (the sentence),
``height`` and ``width``, and ``annotations[]`` with ``image_id`` (the sample's id), ``segmentation`` (COCO
polygons or RLE) and ``bbox`` / ``category_id`` (not read: the box is taken from the mask). The extra keys of the
released files (``original_id``, ``dataset_name``, ``tokens_negative``, ``sentence_id``, ...) are ignored. A sample
with several annotations refers to their union; one with none is an error.

Training (``RefCOCOClips``): each (image, sentence, object) becomes a clip of ``num_frames`` frames, each frame the
image under its own random affine warp (rotation, translation, scale, shear; ``AffineRange``) applied alike to the
image and the mask, so the object moves a little from frame to frame; then the clip transforms of the video data
(flip, resize / crop, photometric; ``make_train_transforms``), the same for all frames. The target has the keys of
``datasets.ytvos.YTVOSClips`` (``video``: the image's stem, ``exp_id``: the sample id, ``kind``: the set's name).
Evaluation (``RefCOCOImages``): one ``(image, sentence, mask at the original size)`` per sample
(``metrics.refcoco``).
"""
import json
import math
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from pycocotools import mask as coco_mask
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from datasets.errors import DatasetFormatError
from datasets.item_rng import EpochSeeded, item_rng
from datasets.ytvos import load_image, make_target, normalize_caption
from util.errors import UserInputError

SETS = ("refcoco", "refcoco+", "refcocog")
IMAGE_DIR = "train2014"
SPLITS = ("train", "val")
MAX_WARP_TRIES = 10


def annotation_path(root: str | Path, name: str, split: str) -> Path:
    return Path(root) / name / f"instances_{name}_{split}.json"


@dataclass(frozen=True)
class RefSample:
    """One referring sample: the sentence about the object(s) ``segmentations`` of ``file_name``."""

    sample_id: int
    file_name: str
    caption: str
    segmentations: tuple
    height: int
    width: int
    set_name: str
    json_path: str


def read_refcoco(path: Path, image_dir: Path, set_name: str) -> list[RefSample]:
    """The samples of one RefCOCO-family json, in the order of its ``images``; every image file checked to exist.

    Raises FileNotFoundError (the json, or an image it names: both are in the message) or DatasetFormatError
    (not json, a missing key, a sample without annotation).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected the RefCOCO-family jsons that ReferFormer distributes "
                                f"(<root>/{set_name}/instances_{set_name}_<split>.json); check data_root and "
                                "data.refcoco_sets")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"{path} is not valid json ({error}); re-download it") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DatasetFormatError(f"{path}: expected a COCO-format object with 'images' and 'annotations' lists")
    segmentations = defaultdict(list)
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or "image_id" not in annotation or "segmentation" not in annotation:
            raise DatasetFormatError(f"{path}: annotation {index} needs 'image_id' and 'segmentation'")
        segmentations[annotation["image_id"]].append(annotation["segmentation"])
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir} not found: the COCO train2014 images that {path} refers to")
    on_disk = set(os.listdir(image_dir))
    samples = []
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not all(key in image for key in ("id", "file_name", "caption")):
            raise DatasetFormatError(f"{path}: image entry {index} needs 'id', 'file_name' and 'caption' (the "
                                     "sentence of the sample)")
        caption = image["caption"]
        if not isinstance(caption, str) or not caption.strip():
            raise DatasetFormatError(f"{path}: image {image['id']!r} has an empty caption ({caption!r})")
        if image["file_name"] not in on_disk:
            raise FileNotFoundError(f"{path} refers to the image {image_dir / image['file_name']} (image id "
                                    f"{image['id']!r}), which is missing")
        if not segmentations.get(image["id"]):
            raise DatasetFormatError(f"{path}: image {image['id']!r} ({image['file_name']}) has no annotation: "
                                     "every sample needs the mask of its object")
        samples.append(RefSample(image["id"], image["file_name"], caption, tuple(segmentations[image["id"]]),
                                 int(image.get("height", 0)), int(image.get("width", 0)), set_name, str(path)))
    return samples


def decode_segmentation(sample: RefSample, size: tuple[int, int]) -> np.ndarray:
    """Bool mask ``[H, W]`` of the sample's object(s) in an image of ``size`` ``(H, W)`` (polygons, uncompressed
    or compressed RLE; several annotations are united)."""
    height, width = size
    if (sample.height, sample.width) not in ((0, 0), (height, width)):
        raise DatasetFormatError(f"{sample.json_path}: image {sample.sample_id!r} is {sample.width}x{sample.height} "
                                 f"(WxH) in the json but {sample.file_name} is {width}x{height}")
    mask = np.zeros((height, width), dtype=bool)
    for segmentation in sample.segmentations:
        try:
            if isinstance(segmentation, list):  # polygons
                rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
                rle = coco_mask.frPyObjects(segmentation, height, width)
            else:
                rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
            decoded = coco_mask.decode(rle)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as error:
            raise DatasetFormatError(f"{sample.json_path}: image {sample.sample_id!r} has a segmentation that does "
                                     f"not decode ({error})") from error
        if decoded.shape != (height, width):
            raise DatasetFormatError(f"{sample.json_path}: image {sample.sample_id!r}: its segmentation is "
                                     f"{decoded.shape[1]}x{decoded.shape[0]} but {sample.file_name} is "
                                     f"{width}x{height}")
        mask |= decoded.astype(bool)
    return mask


def read_sets(root: str | Path, sets: list[str] | None, split: str, image_dir: str = IMAGE_DIR) -> list[RefSample]:
    """The samples of every set in ``sets`` (None: refcoco, refcoco+, refcocog) for ``split``, concatenated."""
    if split not in SPLITS:
        raise UserInputError(f"unknown RefCOCO split {split!r}; choose one of {', '.join(SPLITS)}")
    samples = []
    for name in sets or SETS:
        samples += read_refcoco(annotation_path(root, name, split), Path(root) / image_dir, name)
    return samples


@dataclass(frozen=True)
class AffineRange:
    """Per-frame random affine warp of a pseudo-clip: rotation in ±``degrees``, translation in ±``translate`` of
    the image side, scale in ``1 ± scale``, horizontal shear in ±``shear`` degrees."""

    degrees: float = 10.0
    translate: float = 0.1
    scale: float = 0.1
    shear: float = 5.0

    def draw(self, rng: random.Random, size: tuple[int, int]) -> dict:
        height, width = size
        return {"angle": rng.uniform(-self.degrees, self.degrees),
                "translate": [round(rng.uniform(-self.translate, self.translate) * width),
                              round(rng.uniform(-self.translate, self.translate) * height)],
                "scale": rng.uniform(1.0 - self.scale, 1.0 + self.scale),
                "shear": [rng.uniform(-self.shear, self.shear), 0.0]}


def warp(image: Image.Image, mask: np.ndarray, params: dict) -> tuple[Image.Image, np.ndarray]:
    """``image`` (bilinear) and ``mask`` (nearest) under the affine ``params``; uncovered pixels are 0."""
    warped = TF.affine(image, interpolation=InterpolationMode.BILINEAR, fill=0, **params)
    warped_mask = TF.affine(Image.fromarray(mask.astype(np.uint8) * 255), interpolation=InterpolationMode.NEAREST,
                            fill=0, **params)
    return warped, np.asarray(warped_mask) > 127


def pseudo_clip(image: Image.Image, mask: np.ndarray, num_frames: int, affine: AffineRange,
                rng: random.Random) -> tuple[list[Image.Image], np.ndarray]:
    """``num_frames`` frames, each ``image`` under its own random affine warp, and their masks ``[T, H, W]``.
    A warp that would push a visible object out of the frame is redrawn (up to ``MAX_WARP_TRIES`` times, then the
    frame is the unwarped image)."""
    frames, masks = [], []
    size = (image.height, image.width)
    for _ in range(num_frames):
        for _ in range(MAX_WARP_TRIES):
            frame, frame_mask = warp(image, mask, affine.draw(rng, size))
            if frame_mask.any() or not mask.any():
                break
        else:
            frame, frame_mask = image.copy(), mask.copy()
        frames.append(frame)
        masks.append(frame_mask)
    return frames, np.stack(masks)


def load_sample(root: Path, image_dir: str, sample: RefSample) -> tuple[Image.Image, np.ndarray]:
    """The RGB image of ``sample`` and its object mask ``[H, W]`` at the image's size."""
    image = load_image(root / image_dir / sample.file_name, f"{sample.set_name} image {sample.sample_id}",
                       sample.file_name, "RGB")
    return image, decode_segmentation(sample, (image.height, image.width))


class RefCOCOClips(EpochSeeded, Dataset):
    """Training pseudo-clips ``(frames [T, 3, H, W], target)`` of RefCOCO-family samples (module docstring).

    Item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``.
    """

    def __init__(self, root: str | Path, sets: list[str] | None, num_frames: int, transforms,
                 affine: AffineRange = AffineRange(), seed: int = 0, image_dir: str = IMAGE_DIR):
        if num_frames < 1:
            raise ValueError(f"need num_frames >= 1, got {num_frames}")
        self.root, self.image_dir, self.num_frames = Path(root), image_dir, num_frames
        self.transforms, self.affine, self.seed = transforms, affine, seed
        self.samples = read_sets(root, sets, "train", image_dir)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        rng = self.rng_for(index)
        sample = self.samples[index]
        image, mask = load_sample(self.root, self.image_dir, sample)
        frames, masks = pseudo_clip(image, mask, self.num_frames, self.affine, rng)
        stem = Path(sample.file_name).stem
        target = make_target(masks, sample.caption, (image.height, image.width),
                             frames=[f"{stem}_{t}" for t in range(self.num_frames)], video=stem,
                             exp_id=str(sample.sample_id), kind=sample.set_name)
        return self.transforms(frames, target, rng)


class RefCOCOImages(Dataset):
    """Evaluation samples of one set's split: ``(image PIL, normalised sentence, bool mask [H, W])``."""

    def __init__(self, root: str | Path, set_name: str, split: str = "val", image_dir: str = IMAGE_DIR):
        self.root, self.image_dir, self.set_name = Path(root), image_dir, set_name
        self.samples = read_sets(root, [set_name], split, image_dir)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, str, np.ndarray]:
        sample = self.samples[index]
        image, mask = load_sample(self.root, self.image_dir, sample)
        return image, normalize_caption(sample.caption), mask


class MixedClips(Dataset):
    """Training clips of several datasets: ``counts[k]`` items of ``sources[k]`` per epoch, source after source
    (the training loop shuffles them).

    The items of source k in epoch e are a permutation of it seeded by ``(seed, e, k)``, concatenated with further
    permutations when ``counts[k]`` exceeds its size; ``set_epoch`` is passed on to the sources, so item ``i`` of
    epoch ``e`` still depends only on ``(seed, e, i)``.
    """

    def __init__(self, sources: list[Dataset], counts: list[int], seed: int = 0):
        if len(sources) != len(counts) or any(count < 0 for count in counts) or not sum(counts):
            raise ValueError(f"need one non-negative count per source and some items, got {counts}")
        for source, count in zip(sources, counts):
            if count and not len(source):
                raise ValueError(f"a source with no items cannot give {count} clips an epoch")
        self.sources, self.counts, self.seed = sources, list(counts), seed
        self.offsets = np.cumsum([0] + self.counts).tolist()
        self.epoch, self._orders = 0, {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for source in self.sources:
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)

    def __len__(self) -> int:
        return self.offsets[-1]

    def order(self, k: int) -> list[int]:
        """The source indices of source ``k``'s items in this epoch."""
        if self._orders.get("epoch") != self.epoch:
            self._orders = {"epoch": self.epoch}  # only the current epoch's orders are kept
        if k not in self._orders:
            rng = item_rng(self.seed, self.epoch, 1_000_000 + k)
            size, order = len(self.sources[k]), []
            while len(order) < self.counts[k]:
                order += rng.sample(range(size), size)
            self._orders[k] = order[:self.counts[k]]
        return self._orders[k]

    def locate(self, index: int) -> tuple[int, int]:
        """``(source, index in that source)`` of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return k, self.order(k)[index - self.offsets[k]]

    def __getitem__(self, index: int):
        k, source_index = self.locate(index)
        return self.sources[k][source_index]


def joint_counts(ytvos_clips: int, refcoco_samples: int, fraction: float) -> list[int]:
    """Clips per epoch ``[Ref-YouTube-VOS, RefCOCO]``: every Ref-YouTube-VOS clip once, and as many RefCOCO
    pseudo-clips as make them ``fraction`` of the epoch (``0 <= fraction < 1``)."""
    if not 0.0 <= fraction < 1.0:
        raise UserInputError(f"data.refcoco_fraction must be in [0, 1) (the share of RefCOCO pseudo-clips in an "
                             f"epoch), got {fraction}")
    refcoco = math.floor(ytvos_clips * fraction / (1.0 - fraction) + 0.5) if refcoco_samples else 0
    return [ytvos_clips, refcoco]
