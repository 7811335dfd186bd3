"""Ref-YTVOS-layout loaders on a hand-written mini dataset (palette PNGs, sparse frame names)."""
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import build_dataset, load_frames, read_meta_expressions
from datasets.errors import DatasetFormatError
from datasets.transforms_video import (Check, Compose, Normalize, RandomHorizontalFlip, ToTensor,
                                       make_train_transforms)
from datasets.ytvos import YTVOSClips, YTVOSVideos, sample_clip_indices
from util.box_ops import box_xyxy_to_cxcywh, masks_to_boxes
from util.config import load_config
from util.nested_tensor import collate_clips

H, W = 24, 32
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
PLAIN = Compose([Check(), ToTensor(), Normalize()])
# Sparse names as in the real release (every 5th source frame).
NAMES_A = ["00000", "00005", "00010", "00015", "00020", "00025"]
NAMES_B = ["00003", "00008"]


def grey(index: int) -> int:
    """Frame ``index`` of a video is a flat image of this grey level, so a loaded frame tells its index."""
    return 30 + 35 * index


def object1_box(index: int) -> list[int]:
    """xyxy (x1/y1 exclusive) of object 1 of vid_a in frame ``index``: a rectangle moving right."""
    return [2 + 2 * index, 4, 9 + 2 * index, 11]


def write_palette_png(path: Path, ids: np.ndarray) -> None:
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    image.save(path)


def write_video(root: Path, split: str, video: str, names: list[str], ids_per_frame: list[np.ndarray]) -> None:
    image_dir = root / split / "JPEGImages" / video
    mask_dir = root / split / "Annotations" / video
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for index, (name, ids) in enumerate(zip(names, ids_per_frame)):
        Image.new("RGB", (W, H), (grey(index),) * 3).save(image_dir / f"{name}.jpg", quality=95)
        write_palette_png(mask_dir / f"{name}.png", ids)


def ids_vid_a(index: int) -> np.ndarray:
    ids = np.zeros((H, W), dtype=np.uint8)
    x0, y0, x1, y1 = object1_box(index)
    ids[y0:y1, x0:x1] = 1
    if index >= 3:  # object 2 enters at the 4th frame
        ids[15:20, 20:30] = 2
    return ids


def write_json(root: Path, split: str, videos: dict) -> Path:
    path = root / "meta_expressions" / split / "meta_expressions.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"videos": videos}))
    return path


@pytest.fixture()
def mini_ytvos(tmp_path: Path) -> Path:
    root = tmp_path / "ytvos"
    write_video(root, "train", "vid_a", NAMES_A, [ids_vid_a(i) for i in range(len(NAMES_A))])
    box_b = np.zeros((H, W), dtype=np.uint8)
    box_b[0:5, 0:6] = 1
    write_video(root, "train", "vid_b", NAMES_B, [box_b, box_b])
    videos = {
        "vid_a": {
            "expressions": {
                "0": {"exp": "The  LEFT\tdog ", "obj_id": "1"},
                "1": {"exp": "the cat", "obj_id": "2", "kind": "appearance"},
            },
            "frames": NAMES_A,
        },
        "vid_b": {"expressions": {"0": {"exp": "a box", "obj_id": "1"}}, "frames": NAMES_B},
    }
    write_json(root, "train", videos)
    write_video(root, "valid", "vid_v", NAMES_A[:4], [ids_vid_a(i) for i in range(4)])
    write_json(root, "valid", {"vid_v": {"expressions": {"0": {"exp": "x", "obj_id": "2"}}, "frames": NAMES_A[:4]}})
    return root


def clips(root: Path, num_frames: int = 3, reverse_prob: float = 0.0, transforms=PLAIN, seed: int = 0):
    return YTVOSClips(root, "train", num_frames, max_skip=2, reverse_prob=reverse_prob, transforms=transforms,
                      seed=seed)


def frame_indices(frames: torch.Tensor) -> list[int]:
    """Recover each frame's index in its video from its grey level."""
    pixels = (frames * STD[:, None, None] + MEAN[:, None, None]) * 255  # [T, 3, H, W]
    levels = pixels.mean(dim=(1, 2, 3))
    return [round((level.item() - 30) / 35) for level in levels]


def test_items_enumerate_anchors_every_num_frames(mini_ytvos):
    dataset = clips(mini_ytvos, num_frames=4)
    # vid_a: 6 frames -> anchors 0, 4 for each of 2 expressions; vid_b: 2 frames -> anchor 0.
    assert dataset.items == [
        ("vid_a", "0", 0), ("vid_a", "0", 4), ("vid_a", "1", 0), ("vid_a", "1", 4), ("vid_b", "0", 0),
    ]


def test_clip_matches_the_target_contract(mini_ytvos):
    dataset = clips(mini_ytvos)
    for index in range(len(dataset)):
        frames, target = dataset[index]
        video = target["video"]
        all_names = NAMES_A if video == "vid_a" else NAMES_B
        assert frames.shape == (3, 3, H, W) and frames.dtype == torch.float32
        assert target["masks"].shape == (3, H, W) and target["masks"].dtype == torch.float32
        assert set(target["masks"].unique().tolist()) <= {0.0, 1.0}
        assert target["boxes"].shape == (3, 4) and target["valid"].dtype == torch.long
        assert target["orig_size"].tolist() == [H, W] and target["size"].tolist() == [H, W]
        # frame names come from the json (sparse), sorted in time, and the pixels are those frames
        assert all(name in all_names for name in target["frames"])
        positions = [all_names.index(name) for name in target["frames"]]
        assert positions == sorted(positions)
        assert frame_indices(frames) == positions


def test_caption_kind_and_ids(mini_ytvos):
    dataset = clips(mini_ytvos)
    _, first = dataset[0]
    _, cat = dataset[2]
    assert first["caption"] == "the left dog" and first["kind"] == "" and first["exp_id"] == "0"
    assert cat["caption"] == "the cat" and cat["kind"] == "appearance" and cat["video"] == "vid_a"


def test_boxes_are_the_mask_extents_and_valid_flags(mini_ytvos):
    dataset = clips(mini_ytvos, num_frames=6)
    _, dog = dataset[0]  # obj 1, every frame
    expected = torch.tensor([object1_box(NAMES_A.index(n)) for n in dog["frames"]], dtype=torch.float32)
    expected = box_xyxy_to_cxcywh(expected) / torch.tensor([W, H, W, H])
    assert torch.allclose(dog["boxes"], expected)
    assert dog["valid"].tolist() == [1] * 6
    _, cat = dataset[1]  # obj 2, absent from the first three frames
    assert cat["valid"].tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.all(cat["boxes"][:3] == 0) and torch.all(cat["masks"][:3] == 0)
    assert torch.allclose(cat["boxes"][3], torch.tensor([25 / W, 17.5 / H, 10 / W, 5 / H]))
    assert cat["masks"][3].sum() == 50


def test_reverse_flips_frames_and_targets_together(mini_ytvos):
    forward = clips(mini_ytvos, reverse_prob=0.0)
    backward = clips(mini_ytvos, reverse_prob=1.0)
    for index in range(len(forward)):
        frames_f, target_f = forward[index]
        frames_b, target_b = backward[index]
        assert target_b["frames"] == target_f["frames"][::-1]
        assert torch.equal(frames_b, frames_f.flip(0))
        for key in ("masks", "boxes", "valid"):
            assert torch.equal(target_b[key], target_f[key].flip(0))


def test_short_video_repeats_frames(mini_ytvos):
    frames, target = clips(mini_ytvos, num_frames=5)[4]  # vid_b has 2 frames
    assert target["video"] == "vid_b" and len(target["frames"]) == 5
    assert set(target["frames"]) == set(NAMES_B)
    assert target["frames"] == sorted(target["frames"]) and frames.shape[0] == 5


@pytest.mark.parametrize("length,anchor", [(30, 0), (30, 29), (30, 14), (5, 2)])
def test_sample_clip_indices(length, anchor):
    for seed in range(20):
        indices = sample_clip_indices(length, anchor, 5, 3, random.Random(seed))
        assert len(indices) == 5 and len(set(indices)) == 5 and indices == sorted(indices)
        assert anchor in indices and all(0 <= i < length for i in indices)
        # a local neighbour (1..max_skip away) on each side that exists
        if anchor > 0:
            assert any(anchor - 3 <= i < anchor for i in indices)
        if anchor < length - 1:
            assert any(anchor < i <= anchor + 3 for i in indices)


def test_deterministic_with_set_epoch(mini_ytvos):
    cfg = {"data": {"train_scales": [16, 20, 24], "max_size": 40}}
    first = clips(mini_ytvos, reverse_prob=0.5, transforms=make_train_transforms(cfg), seed=3)
    first.set_epoch(2)
    epoch2 = [first[i] for i in range(len(first))]
    first.set_epoch(5)
    epoch5 = [first[i] for i in range(len(first))]
    resumed = clips(mini_ytvos, reverse_prob=0.5, transforms=make_train_transforms(cfg), seed=3)
    resumed.set_epoch(2)
    for index, (frames, target) in enumerate(epoch2):
        frames_again, target_again = resumed[index]
        assert torch.equal(frames, frames_again)
        assert target["frames"] == target_again["frames"] and target["caption"] == target_again["caption"]
        assert torch.equal(target["masks"], target_again["masks"])
    changed = [
        t2["frames"] != t5["frames"] or f2.shape != f5.shape or not torch.equal(f2, f5)
        for (f2, t2), (f5, t5) in zip(epoch2, epoch5)
    ]
    assert sum(changed) >= 3


def test_object_absent_from_clip_is_reanchored(mini_ytvos):
    # obj 2 is absent from frames 0-2; a 2-frame clip anchored at 0 gets re-anchored where it is visible
    dataset = clips(mini_ytvos, num_frames=2)
    cat_items = [i for i, item in enumerate(dataset.items) if item[:2] == ("vid_a", "1")]
    expected_mask = torch.zeros(H, W, dtype=torch.bool)
    expected_mask[15:20, 20:30] = True
    for index in cat_items:
        frames, target = dataset[index]
        shown = frame_indices(frames)
        assert any(i >= 3 for i in shown)  # the clip was moved to where the cat is
        assert target["valid"].tolist() == [int(i >= 3) for i in shown]  # valid exactly on the cat's frames
        for i, mask in zip(shown, target["masks"]):
            assert torch.equal(mask.bool(), expected_mask if i >= 3 else torch.zeros_like(expected_mask))


def test_whole_video_items_with_ground_truth(mini_ytvos):
    dataset = YTVOSVideos(mini_ytvos, "valid", PLAIN)
    assert len(dataset) == 1
    frames, target = dataset[0]
    assert target["frames"] == NAMES_A[:4] and frames.shape == (4, 3, H, W)
    assert frame_indices(frames) == [0, 1, 2, 3]
    assert target["valid"].tolist() == [0, 0, 0, 1]


def test_collate_of_loader_samples(mini_ytvos):
    dataset = clips(mini_ytvos)
    samples, captions, targets = collate_clips([dataset[0], dataset[4]], size_divisibility=32)
    assert samples.tensors.shape == (2, 3, 3, 32, 32)
    assert captions == ["the left dog", "a box"]
    assert targets[0]["masks"].shape == (3, 32, 32) and targets[0]["masks"][:, H:].sum() == 0


def test_build_dataset_reads_refshapes(refshapes_root):
    cfg = load_config(Path(__file__).parents[2] / "configs" / "refshapes_tiny.yaml")
    cfg["data_root"] = str(refshapes_root)
    cfg["data"]["reverse_prob"] = 0.0
    train = build_dataset("refshapes", "train", cfg)
    frames, target = train[0]
    num_frames, size = cfg["data"]["num_frames"], cfg["data"]["train_scales"][0]
    assert frames.shape == (num_frames, 3, size, size)
    assert target["kind"] != "" and target["valid"].sum() >= 1
    valid = build_dataset("refshapes", "val", cfg)
    frames, target = valid[0]
    assert frames.shape[0] == len(target["frames"]) == 8
    cfg["data"]["reverse_prob"] = 0.3
    with pytest.raises(ValueError, match="reverse_prob"):
        build_dataset("refshapes", "train", cfg)


def test_build_dataset_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("coco", "train", {"data_root": ".", "data": {}})
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset("ytvos", "test", {"data_root": ".", "data": {}})


# Clear errors on broken data


def test_missing_and_broken_json(mini_ytvos):
    with pytest.raises(FileNotFoundError, match="meta_expressions.json"):
        read_meta_expressions(mini_ytvos, "test")
    path = mini_ytvos / "meta_expressions" / "train" / "meta_expressions.json"
    path.write_text('{"videos": {"vid_a": ')
    with pytest.raises(DatasetFormatError, match=str(path)):
        read_meta_expressions(mini_ytvos, "train")


def test_json_missing_keys_names_the_video(mini_ytvos):
    path = write_json(mini_ytvos, "train", {"vid_a": {"expressions": {"0": {"exp": "x", "obj_id": "1"}}}})
    with pytest.raises(DatasetFormatError, match="vid_a.*frames"):
        read_meta_expressions(mini_ytvos, "train")
    write_json(mini_ytvos, "train", {"vid_a": {"expressions": {"0": {"obj_id": "1"}}, "frames": NAMES_A}})
    with pytest.raises(DatasetFormatError, match="vid_a.*'0'.*exp"):
        read_meta_expressions(mini_ytvos, "train")
    write_json(mini_ytvos, "train", {"vid_a": {"expressions": {"0": {"exp": "x"}}, "frames": NAMES_A}})
    with pytest.raises(DatasetFormatError, match="vid_a.*obj_id"):
        clips(mini_ytvos)
    assert path.exists()


def test_missing_video_folder_and_frame(mini_ytvos):
    write_json(mini_ytvos, "train", {"vid_z": {"expressions": {}, "frames": ["00000"]}})
    with pytest.raises(FileNotFoundError, match="vid_z"):
        read_meta_expressions(mini_ytvos, "train")
    write_json(mini_ytvos, "train", {"vid_a": {"expressions": {}, "frames": NAMES_A + ["00030"]}})
    with pytest.raises(FileNotFoundError, match="'00030'.*'vid_a'"):
        read_meta_expressions(mini_ytvos, "train")


def test_corrupt_jpeg_names_video_and_frame(mini_ytvos):
    path = mini_ytvos / "train" / "JPEGImages" / "vid_a" / "00010.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetFormatError, match="'vid_a'.*'00010'.*truncated or corrupt"):
        load_frames(mini_ytvos, "train", "vid_a", NAMES_A)
    assert len(load_frames(mini_ytvos, "train", "vid_a", NAMES_A[:2])) == 2


def test_palette_id_mismatch_names_the_video(mini_ytvos):
    write_json(mini_ytvos, "train", {"vid_a": {"expressions": {"0": {"exp": "x", "obj_id": "7"}}, "frames": NAMES_A}})
    dataset = clips(mini_ytvos)
    with pytest.raises(DatasetFormatError, match="'vid_a'.*object id 7"):
        dataset[0]


def test_annotation_size_mismatch_names_the_frame(mini_ytvos):
    write_palette_png(mini_ytvos / "train" / "Annotations" / "vid_a" / "00005.png", np.ones((H, W + 1)))
    dataset = clips(mini_ytvos, num_frames=6)
    with pytest.raises(DatasetFormatError, match="'vid_a'.*'00005'.*annotation"):
        dataset[0]


def test_split_without_ground_truth_is_refused(mini_ytvos):
    write_json(mini_ytvos, "test", {"vid_a": {"expressions": {"0": {"exp": "x"}}, "frames": NAMES_A}})
    (mini_ytvos / "test" / "JPEGImages").mkdir(parents=True)
    (mini_ytvos / "train" / "JPEGImages" / "vid_a").rename(mini_ytvos / "test" / "JPEGImages" / "vid_a")
    with pytest.raises(FileNotFoundError, match="inference_ytvos.py"):
        YTVOSVideos(mini_ytvos, "test", PLAIN)


def test_sentences_per_clip_share_frames_and_augmentation(mini_ytvos):
    dataset = YTVOSClips(mini_ytvos, "train", 3, max_skip=2, reverse_prob=0.5, transforms=make_train_transforms(
        {"data": {"train_scales": [24], "max_size": 32}}), seed=3, sentences_per_clip=2)
    assert dataset.items == [("vid_a", None, 0), ("vid_a", None, 3), ("vid_b", None, 0)]
    for index in range(len(dataset)):
        frames, targets = dataset[index]
        assert len(targets) == 2
        for target in targets:
            assert target["frames"] == targets[0]["frames"]  # one clip ...
            assert target["masks"].shape[-2:] == frames.shape[-2:]  # ... and one resize / crop for all
        if targets[0]["video"] == "vid_a":
            # Both expressions of vid_a, distinct: object 1 and object 2, each its own mask on the same pixels.
            assert sorted(t["exp_id"] for t in targets) == ["0", "1"]
            assert not torch.equal(targets[0]["masks"], targets[1]["masks"])
        else:  # vid_b has one expression: repeated
            assert [t["exp_id"] for t in targets] == ["0", "0"]
            assert torch.equal(targets[0]["masks"], targets[1]["masks"])
    samples, captions, batch_targets = collate_clips([dataset[0], dataset[2]], size_divisibility=32)
    assert samples.tensors.shape[0] == 2 and len(captions) == 4 == len(batch_targets)
    assert [t["video"] for t in batch_targets] == ["vid_a", "vid_a", "vid_b", "vid_b"]  # grouped by clip


def test_sentences_per_clip_go_through_the_transforms_once(mini_ytvos):
    mirror = Compose([RandomHorizontalFlip(p=1.0), Check(), ToTensor(), Normalize()])
    captions_seen = []

    def transforms(frames, target, rng):
        captions_seen.append(target["caption"])
        return mirror(frames, target, rng)

    dataset = YTVOSClips(mini_ytvos, "train", 3, max_skip=2, reverse_prob=0.0, transforms=transforms, seed=0,
                         sentences_per_clip=2)
    frames, targets = dataset[0]  # vid_a, anchor 0: both of its expressions
    assert len(captions_seen) == 1
    by_id = {target["exp_id"]: target for target in targets}
    assert by_id["0"]["caption"] == "the right dog" and by_id["1"]["caption"] == "the cat"  # both mirrored
    assert by_id["1"]["kind"] == "appearance" and by_id["0"]["kind"] == ""
    indices = [NAMES_A.index(name) for name in targets[0]["frames"]]
    assert frame_indices(frames) == indices
    for exp_id, obj_id in (("0", 1), ("1", 2)):
        target = by_id[exp_id]
        expected = torch.stack([torch.from_numpy(ids_vid_a(i) == obj_id).flip(-1) for i in indices]).float()
        assert torch.equal(target["masks"], expected)
        assert target["valid"].tolist() == expected.flatten(1).any(1).long().tolist()
        scale = torch.tensor([W, H, W, H], dtype=torch.float32)
        torch.testing.assert_close(target["boxes"], box_xyxy_to_cxcywh(masks_to_boxes(expected)) / scale)


def test_one_sentence_per_clip_is_the_plain_item(mini_ytvos):
    plain, single = clips(mini_ytvos), YTVOSClips(mini_ytvos, "train", 3, max_skip=2, reverse_prob=0.0,
                                                  transforms=PLAIN, seed=0, sentences_per_clip=1)
    frames_a, target_a = plain[1]
    frames_b, target_b = single[1]
    assert torch.equal(frames_a, frames_b) and torch.equal(target_a["masks"], target_b["masks"])


def test_collate_refuses_mixed_sentence_counts(mini_ytvos):
    dataset = clips(mini_ytvos)
    frames, target = dataset[0]
    with pytest.raises(ValueError, match="same number of targets"):
        collate_clips([(frames, target), (frames, [target, target])], size_divisibility=32)
