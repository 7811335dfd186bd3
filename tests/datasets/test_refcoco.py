"""datasets.refcoco: the RefCOCO json layout (from RefShapes --format refcoco and hand-written files), pseudo-clips in
the YTVOSClips target format, the joint dataset with Ref-YouTube-VOS."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import build_dataset
from datasets.errors import DatasetFormatError
from datasets.refcoco import (AffineRange, MixedClips, RefCOCOClips, RefCOCOImages, decode_segmentation,
                              joint_counts, read_refcoco)
from datasets.refshapes import generate_refshapes
from util.config import load_config
from util.nested_tensor import collate_clips

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def refcoco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refshapes_refcoco")
    generate_refshapes(root, num_videos=4, num_valid_videos=2, num_frames=4, size=64, seed=0, layout="refcoco")
    return root


def tiny_cfg(data_root, **data) -> dict:
    cfg = load_config(REPO / "configs" / "refshapes_refcoco_tiny.yaml")
    cfg["data_root"] = str(data_root)
    cfg["data"].update(num_frames=3, train_scales=[64], max_size=64, test_size=64, **data)
    return cfg


def test_refshapes_refcoco_layout_is_readable(refcoco_root):
    train = json.loads((refcoco_root / "refcoco" / "instances_refcoco_train.json").read_text())
    samples = read_refcoco(refcoco_root / "refcoco" / "instances_refcoco_train.json", refcoco_root / "train2014",
                           "refcoco")
    assert len(samples) == len(train["images"]) == len(train["annotations"]) > 4
    assert {image["kind"] for image in train["images"]} <= {"appearance", "size", "position", "relation"}
    for sample in samples:
        mask = decode_segmentation(sample, (64, 64))
        assert mask.any()
    val = RefCOCOImages(refcoco_root, "refcoco", "val")
    image, sentence, mask = val[0]
    assert image.size == (64, 64) and mask.shape == (64, 64) and sentence == sentence.lower()


def test_pseudo_clips_have_the_ytvos_target_format(refcoco_root, refshapes_root):
    cfg = tiny_cfg(refcoco_root)
    clips = build_dataset("refcoco", "train", cfg)
    frames, target = clips[0]
    assert frames.shape == (3, 3, 64, 64)
    ytvos_cfg = {**cfg, "data_root": str(refshapes_root), "dataset": "refshapes"}
    _, ytvos_target = build_dataset("refshapes", "train", ytvos_cfg)[0]
    assert set(target) == set(ytvos_target)
    assert target["masks"].shape == (3, 64, 64) and target["valid"].tolist() == [1, 1, 1]
    assert target["kind"] == "refcoco" and len(target["frames"]) == 3
    assert not torch.equal(frames[0], frames[1])  # every frame has its own warp
    assert not torch.equal(target["masks"][0], target["masks"][1])
    again_frames, again = clips[0]  # a pure function of (seed, epoch, index)
    assert torch.equal(frames, again_frames) and torch.equal(target["masks"], again["masks"])
    clips.set_epoch(1)
    assert not torch.equal(clips[0][0], frames)
    samples, captions, _ = collate_clips([clips[1], clips[2]], 32)
    assert samples.tensors.shape[:2] == (2, 3) and len(captions) == 2


def test_masks_follow_the_warp_and_polygons_decode(tmp_path):
    """A hand-written json: a polygon square on a 40x30 image; the warped masks stay on the warped square."""
    (tmp_path / "train2014").mkdir()
    (tmp_path / "refcoco").mkdir()
    pixels = np.zeros((30, 40, 3), dtype=np.uint8)
    pixels[10:20, 5:15] = 255
    Image.fromarray(pixels).save(tmp_path / "train2014" / "COCO_train2014_000000000001.png")
    json_path = tmp_path / "refcoco" / "instances_refcoco_train.json"
    json_path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "COCO_train2014_000000000001.png", "height": 30, "width": 40,
                    "caption": "The  White Square", "original_id": 1, "dataset_name": "refcoco"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [5, 10, 10, 10], "iscrowd": 0,
                         "segmentation": [[5, 10, 15, 10, 15, 20, 5, 20]]}]}))
    (sample,) = read_refcoco(json_path, tmp_path / "train2014", "refcoco")
    mask = decode_segmentation(sample, (30, 40))
    assert mask[11:19, 6:14].all() and mask.sum() < 130 and not mask[:9].any()
    clips = RefCOCOClips(tmp_path, ["refcoco"], 4, lambda frames, target, rng: (frames, target),
                         AffineRange(degrees=20, translate=0.2), seed=3)
    frames, target = clips[0]
    assert target["caption"] == "the white square"
    for frame, frame_mask in zip(frames, target["masks"]):
        white = np.asarray(frame.convert("L")) > 127
        assert (white & frame_mask.numpy()).sum() >= 0.8 * frame_mask.sum().item() > 0


def test_a_missing_image_names_the_json_and_the_image(refcoco_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(refcoco_root, root)
    victim = sorted((root / "train2014").iterdir())[0]
    victim.unlink()
    with pytest.raises(FileNotFoundError) as error:
        build_dataset("refcoco", "train", tiny_cfg(root))
    assert "instances_refcoco_train.json" in str(error.value) and str(victim) in str(error.value)


def test_malformed_json_is_named(tmp_path):
    (tmp_path / "train2014").mkdir()
    path = tmp_path / "instances_refcoco_train.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}))
    with pytest.raises(DatasetFormatError, match="caption"):
        read_refcoco(path, tmp_path / "train2014", "refcoco")


def test_mixed_clips_counts_and_order():
    assert joint_counts(10, 100, 0.5) == [10, 10] and joint_counts(10, 100, 0.2) == [10, 3]
    assert joint_counts(10, 100, 0.0) == [10, 0]
    with pytest.raises(ValueError, match="refcoco_fraction"):
        joint_counts(10, 100, 1.0)
    small, large = list(range(4)), list(range(100, 110))
    mixed = MixedClips([small, large], [4, 13], seed=1)
    items = [mixed[i] for i in range(len(mixed))]
    assert sorted(items[:4]) == small  # every clip of the first source once
    assert len(set(items[4:14])) == 10 and set(items[4:]) <= set(large)  # a permutation, then another one
    mixed.set_epoch(1)
    assert [mixed[i] for i in range(len(mixed))] != items


def test_joint_dataset_mixes_ytvos_and_refcoco(refcoco_root, refshapes_root):
    cfg = tiny_cfg(refshapes_root, refcoco_root=str(refcoco_root), refcoco_fraction=0.25)
    joint = build_dataset("ytvos_refcoco", "train", cfg)
    ytvos_clips = len(joint.sources[0])
    assert joint.counts == [ytvos_clips, round(ytvos_clips / 3)]
    batch = [joint[0], joint[len(joint) - 1]]
    assert {target["kind"] for _, target in batch} & {"refcoco"}
    samples, captions, targets = collate_clips(batch, 32)
    assert samples.tensors.shape[:2] == (2, 3) and all(t["masks"].shape[0] == 3 for t in targets)
