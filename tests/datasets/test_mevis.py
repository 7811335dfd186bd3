"""datasets/mevis.py and mevis_masks.py on a small MeViS tree written here: RLE round trip, union targets and their
boxes, null frames, absent objects, what the store keeps, build_dataset, and malformed mask_dict.json files."""
import json

import numpy as np
import pytest
import torch

from datasets import build_dataset
from datasets.errors import DatasetFormatError
from datasets.mevis import MeViSClips, MeViSVideos, mevis_version
from datasets.transforms_video import make_test_transforms
from testing.mevis_tree import write_split
from util.config import load_config
from util.mask_rle import mask_to_rle

T, H, W = 6, 24, 32


def keep(frames, target, rng):
    """A transform that changes nothing, so the targets can be compared with the masks written."""
    return frames, target


def objects() -> dict[int, np.ndarray]:
    """Three objects of video "v": 10 is absent from frames 0-1, 11 from frames 4-5, 12 from every frame."""
    first, second = np.zeros((T, H, W), bool), np.zeros((T, H, W), bool)
    for t in range(T):
        if t >= 2:
            first[t, 2:8, 3 + t:9 + t] = True  # moves right
        if t < 4:
            second[t, 14:22, 20:24] = True
            second[t, 18, 10:20] = True  # a thin arm: irregular
    return {10: first, 11: second, 12: np.zeros((T, H, W), bool)}


@pytest.fixture()
def mevis_root(tmp_path):
    videos = {"v": {"objects": objects(), "expressions": {
        "0": ("the thing moving right", [10]), "1": ("both things", [10, 11]), "2": ("the absent one", [12])}}}
    other = {"w": {"objects": {20: objects()[11], 21: objects()[10]}, "expressions": {"0": ("it", [21])}}}
    for split in ("train", "valid_u"):
        write_split(tmp_path, split, {**videos, **other})
    write_split(tmp_path, "valid", videos, masks=False)
    return tmp_path


def test_whole_video_targets_are_the_unions_with_their_boxes(mevis_root):
    dataset = MeViSVideos(mevis_root, "valid_u", make_test_transforms(H, None))  # short side already H: no resize
    assert dataset.items == [("v", "0"), ("v", "1"), ("v", "2"), ("w", "0")]
    masks = objects()
    video, target = dataset[1]
    union = masks[10] | masks[11]
    assert video.shape == (T, 3, H, W)
    np.testing.assert_array_equal(target["masks"].numpy().astype(bool), union)  # RLE round trip, union
    assert target["valid"].tolist() == [1] * T
    ys, xs = np.nonzero(union[2])  # frame 2: box of the union, normalised cxcywh
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    expected = [(x0 + x1) / 2 / W, (y0 + y1) / 2 / H, (x1 - x0) / W, (y1 - y0) / H]
    assert target["boxes"][2].tolist() == pytest.approx(expected)
    _, single = dataset[0]
    assert single["valid"].tolist() == [0, 0, 1, 1, 1, 1]  # null RLEs -> absent frames
    assert single["boxes"][:2].abs().sum() == 0
    _, absent = dataset[2]
    assert absent["valid"].tolist() == [0] * T and absent["masks"].sum() == 0
    assert absent["caption"] == "the absent one"


def test_valid_split_has_no_masks(mevis_root):
    _, target = MeViSVideos(mevis_root, "valid", make_test_transforms(H, None))[0]
    assert "masks" not in target and target["caption"] == "the thing moving right"
    assert target["orig_size"].tolist() == [H, W] and target["frames"] == [f"{i:05d}" for i in range(T)]


def test_training_clips_union_null_frames_and_absent_objects(mevis_root):
    dataset = MeViSClips(mevis_root, "train", num_frames=2, max_skip=1, reverse_prob=0.0, transforms=keep)
    masks = objects()
    assert len(dataset) == 4 * 3  # 4 expressions x anchors 0, 2, 4 of 6 frames
    for index, (video, exp_id, _) in enumerate(dataset.items):
        _, target = dataset[index]
        frames = [int(name) for name in target["frames"]]
        anno_ids = {("v", "0"): [10], ("v", "1"): [10, 11], ("v", "2"): [12], ("w", "0"): [10]}[(video, exp_id)]
        expected = np.logical_or.reduce([masks[a][frames] for a in anno_ids])
        np.testing.assert_array_equal(target["masks"].numpy(), expected)
        assert target["valid"].tolist() == expected.reshape(len(frames), -1).any(axis=1).astype(int).tolist()
        if anno_ids == [12]:
            assert target["valid"].sum() == 0  # absent from the whole video: kept, valid 0
        else:
            assert target["valid"].sum() > 0  # a clip without the object is re-anchored where it is


def test_clip_anchored_where_the_object_is_absent_moves_to_a_visible_frame(mevis_root):
    dataset = MeViSClips(mevis_root, "train", num_frames=2, max_skip=1, reverse_prob=0.0, transforms=keep)
    index = dataset.items.index(("v", "0", 0))  # frames 0-1: object 10 not there yet
    for epoch in range(5):
        dataset.set_epoch(epoch)
        _, target = dataset[index]
        assert min(int(name) for name in target["frames"]) >= 1 and target["valid"].sum() >= 1


def test_the_store_keeps_only_the_anno_ids_in_use(mevis_root):
    dataset = MeViSClips(mevis_root, "train", num_frames=2, max_skip=1, reverse_prob=0.0, transforms=keep)
    assert sorted(dataset.masks.first) == ["10", "11", "12", "21"]  # 20 is in mask_dict.json, unused
    assert dataset.masks.counts.dtype == np.uint8 and dataset.masks.sizes == {"v": (H, W), "w": (H, W)}
    assert dataset.masks.visible("v", ["10", "11"]).tolist() == [True] * T


def test_build_dataset_reads_the_splits(mevis_root):
    cfg = load_config("configs/refshapes_mevis_tiny.yaml")
    cfg["data_root"] = str(mevis_root)
    train = build_dataset("mevis", "train", cfg)
    assert isinstance(train, MeViSClips) and train.num_frames == cfg["data"]["num_frames"]
    frames, target = train[0]
    assert frames.shape[0] == cfg["data"]["num_frames"] and target["masks"].dtype == torch.float32
    cfg["data"]["sentences_per_clip"] = 2  # two expressions of a video on one clip
    frames, targets = build_dataset("mevis", "train", cfg)[0]
    assert [t["video"] for t in targets] == ["v", "v"] and targets[0]["exp_id"] != targets[1]["exp_id"]
    assert isinstance(build_dataset("mevis", "valid_u", cfg), MeViSVideos)
    assert build_dataset("mevis", "valid", cfg).masks is None
    with pytest.raises(ValueError, match="unknown MeViS split 'test'"):
        build_dataset("mevis", "test", cfg)


def test_release_counts():
    assert mevis_version("valid_u", 793) == "v1" and mevis_version("valid", 2523) == "v2"
    assert mevis_version("valid_u", 794) == "unknown" and mevis_version("valid", 793) == "unknown"


def rewrite_mask_dict(root, change) -> None:
    path = root / "train" / "mask_dict.json"
    mask_dict = json.loads(path.read_text())
    change(mask_dict)
    path.write_text(json.dumps(mask_dict))


def load(root):
    return MeViSClips(root, "train", num_frames=2, max_skip=1, reverse_prob=0.0, transforms=keep)


def test_malformed_mask_dict_names_file_video_expression_and_frame(mevis_root):
    path = mevis_root / "train" / "mask_dict.json"
    where = rf"{path}: video 'v', expression '0', anno_id 10"
    path.write_text('{"10": [')
    with pytest.raises(DatasetFormatError, match=rf"{path} is not valid json"):
        load(mevis_root)
    write_split(mevis_root, "train", {"v": {"objects": objects(), "expressions": {"0": ("a", [10])}}})
    cases = [
        (lambda d: d.pop("10"), rf"{where}: not a key of the file"),
        (lambda d: d["10"].pop(), rf"{where}: 5 entries, but the video has 6 frames"),
        (lambda d: d["10"].__setitem__(3, mask_to_rle(np.ones((H + 1, W), bool))),
         rf"{where}, frame '00003': RLE of size 25x32 \(HxW\), but the video's frames are 24x32"),
        (lambda d: d["10"].__setitem__(2, {"size": [H, W]}), rf"{where}, frame '00002': expected null or a COCO RLE"),
    ]
    for change, message in cases:
        write_split(mevis_root, "train", {"v": {"objects": objects(), "expressions": {"0": ("a", [10])}}})
        rewrite_mask_dict(mevis_root, change)
        with pytest.raises(DatasetFormatError, match=message):
            load(mevis_root)


def test_corrupt_rle_is_named_when_it_is_decoded(mevis_root):
    write_split(mevis_root, "train", {"v": {"objects": objects(), "expressions": {"0": ("a", [10])}}})
    short = mask_to_rle(np.zeros((H, W - 1), bool))["counts"]  # runs for 24 x 31 pixels
    rewrite_mask_dict(mevis_root, lambda d: d["10"][4].update(counts=short))
    dataset = load(mevis_root)  # the runs of a string are checked where it is decoded, in the worker
    with pytest.raises(DatasetFormatError, match=r"video 'v', expression '0', anno_id 10, frame '00004': RLE runs "
                                                 r"cover 744 pixels but its size 24x32 has 768"):
        dataset.masks.union("v", "0", ["10"], range(T), (H, W))


def test_bad_anno_id_lists_and_a_split_without_masks(mevis_root):
    meta = mevis_root / "train" / "meta_expressions.json"
    content = json.loads(meta.read_text())
    content["videos"]["v"]["expressions"]["1"]["anno_id"] = "10"
    meta.write_text(json.dumps(content))
    with pytest.raises(DatasetFormatError, match=rf"{meta}: video 'v', expression '1' needs an 'anno_id' list"):
        load(mevis_root)
    (mevis_root / "valid_u" / "mask_dict.json").unlink()
    with pytest.raises(FileNotFoundError, match="valid_u/mask_dict.json not found"):
        MeViSVideos(mevis_root, "valid_u", keep)
    with pytest.raises(FileNotFoundError, match="expected the MeViS layout"):
        MeViSVideos(mevis_root / "nowhere", "valid_u", keep)
