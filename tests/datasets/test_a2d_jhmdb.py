"""A2D-Sentences (mp4 + h5) and JHMDB-Sentences (png + mat) on mini datasets in the real formats."""
import json
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from datasets import build_dataset
from datasets.a2d import A2DSentences, centred_window, decode_frames
from datasets.errors import DatasetFormatError
from datasets.jhmdb import JHMDBSentences, evenly_spaced_frames
from datasets.transforms_video import Check, Compose, Normalize, ToTensor

H, W = 32, 48
NUM_VIDEO_FRAMES = 6
PLAIN = Compose([Check(), ToTensor(), Normalize()])
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def grey(number: int) -> int:
    """1-based frame ``number`` is a flat frame of this grey level."""
    return 20 + 35 * (number - 1)


def frame_numbers(frames: torch.Tensor) -> list[int]:
    levels = ((frames * STD[:, None, None] + MEAN[:, None, None]) * 255).mean(dim=(1, 2, 3))
    return [round((level.item() - 20) / 35) + 1 for level in levels]


def write_mp4(path: Path, num_frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for number in range(1, num_frames + 1):
            image = np.full((H, W, 3), grey(number), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def instance_mask(instance: int, frame: int) -> np.ndarray:
    """An [H, W] mask that differs per instance and frame (not symmetric, so a missed transpose shows)."""
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[2 + instance : 10 + instance, 5 * instance + frame : 5 * instance + frame + 20] = 1
    return mask


def write_h5(path: Path, frame: int, instances: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    masks = np.stack([instance_mask(i, frame).T for i in instances])  # stored transposed: [N, W, H]
    with h5py.File(path, "w") as f:
        f["instance"] = np.array(instances, dtype=np.float64)  # MATLAB-made files hold doubles
        f["reMask"] = masks[0] if len(instances) == 1 else masks  # one instance: a 2-D array
        f["reBBox"] = np.zeros((4, len(instances)))


@pytest.fixture()
def a2d_root(tmp_path: Path) -> Path:
    root = tmp_path / "a2d"
    (root / "Release").mkdir(parents=True)
    # vid, label, start, end, height, width, total_frames, annotated_frames, subset
    (root / "Release" / "videoset.csv").write_text(
        "vid1,11,0,1,32,48,6,3,0\nvid2,21,0,1,32,48,6,1,1\nvid3,31,0,1,32,48,6,1,0\n"
    )
    for video in ("vid1", "vid2"):
        write_mp4(root / "Release" / "clips320H" / f"{video}.mp4", NUM_VIDEO_FRAMES)
    text = root / "text_annotations"
    text.mkdir()
    (text / "a2d_missed_videos.txt").write_text("vid3\n")
    (text / "a2d_annotation.txt").write_text(
        "video_id,instance_id,query\n"
        "vid1,1,The man on the LEFT\n"
        "vid1,2,a dog running\n"
        "vid2,1,a bird\n"
        "vid3,1,a missed video\n"
        "vid1,1 (copy),a known mistake\n"
    )
    masks = text / "a2d_annotation_with_instances"
    write_h5(masks / "vid1" / "00002.h5", 2, [1, 2])
    write_h5(masks / "vid1" / "00006.h5", 6, [1])
    write_h5(masks / "vid2" / "00003.h5", 3, [1])
    write_h5(masks / "vid3" / "00001.h5", 1, [1])
    return root


def test_centred_window():
    assert centred_window(5, 5, 1, 40) == [3, 4, 5, 6, 7]
    assert centred_window(2, 4, 1, 6) == [1, 1, 2, 3]
    assert centred_window(6, 5, 1, 6) == [4, 5, 6, 6, 6]
    assert centred_window(3, 1, 1, 6) == [3]


def test_decode_frames_in_order_and_clamped(a2d_root):
    frames, numbers = decode_frames(a2d_root / "Release" / "clips320H" / "vid1.mp4", [4, 5, 6, 7, 8])
    assert numbers == [4, 5, 6, 6, 6] and frames[0].size == (W, H)
    means = [np.asarray(frame).mean() for frame in frames]
    assert all(abs(m - grey(n)) < 6 for m, n in zip(means, numbers))


def test_a2d_samples(a2d_root):
    with pytest.warns(UserWarning, match="1 \\(copy\\)"):
        train = A2DSentences(a2d_root, "train", num_frames=4, transforms=PLAIN)
    # vid1 instance 1 in frames 2 and 6, instance 2 in frame 2; vid3 is missed; vid2 is test
    assert [(s.video, s.frame, s.instance, s.sentence_index) for s in train.samples] == [
        ("vid1", 2, 1, 0), ("vid1", 6, 1, 0), ("vid1", 2, 2, 1),
    ]
    with pytest.warns(UserWarning):
        test = A2DSentences(a2d_root, "test", num_frames=4, transforms=PLAIN)
    assert [(s.video, s.frame, s.instance) for s in test.samples] == [("vid2", 3, 1)]


@pytest.mark.filterwarnings("ignore:.*skipping row")
def test_a2d_window_annotated_frame_and_mask(a2d_root):
    dataset = A2DSentences(a2d_root, "train", num_frames=4, transforms=PLAIN)
    frames, target = dataset[2]  # vid1, frame 2, instance 2 (the second mask of a 2-instance file)
    assert frames.shape == (4, 3, H, W)
    assert target["frames"] == ["00001", "00001", "00002", "00003"]
    assert frame_numbers(frames) == [1, 1, 2, 3]
    assert target["annotated_index"] == 2 and target["valid"].tolist() == [0, 0, 1, 0]
    assert torch.equal(target["masks"][2], torch.from_numpy(instance_mask(2, 2)).float())
    assert target["masks"].sum() == instance_mask(2, 2).sum()
    assert target["image_id"] == "v_vid1_f_2_i_2" and target["caption"] == "a dog running"
    assert torch.allclose(target["boxes"][2], torch.tensor([22 / W, 8 / H, 20 / W, 8 / H]))

    frames, target = dataset[1]  # vid1, frame 6 (last frame, single-instance 2-D reMask)
    assert target["frames"] == ["00004", "00005", "00006", "00006"] and frame_numbers(frames) == [4, 5, 6, 6]
    assert torch.equal(target["masks"][2], torch.from_numpy(instance_mask(1, 6)).float())
    assert target["exp_id"] == "0" and target["caption"] == "the man on the left"


@pytest.mark.filterwarnings("ignore:.*skipping row")
def test_build_a2d_and_errors(a2d_root):
    cfg = {"data_root": str(a2d_root), "seed": 0,
           "data": {"num_frames": 3, "train_scales": [16], "max_size": 24, "test_size": 16}}
    test = build_dataset("a2d", "val", cfg)
    frames, target = test[0]
    assert frames.shape == (3, 3, 16, 24) and target["annotated_index"] == 1 and target["valid"].tolist() == [0, 1, 0]
    train = build_dataset("a2d", "train", cfg)
    train.set_epoch(1)
    again = build_dataset("a2d", "train", cfg)
    again.set_epoch(1)
    assert torch.equal(train[0][0], again[0][0])

    write_h5(a2d_root / "text_annotations" / "a2d_annotation_with_instances" / "vid2" / "00003.h5", 3, [2])
    with pytest.raises(DatasetFormatError, match="00003.h5"):
        test[0]  # the sample's instance is no longer in its h5 file
    (a2d_root / "Release" / "clips320H" / "vid1.mp4").write_bytes(b"not a video")
    with pytest.raises(DatasetFormatError, match="vid1.mp4"):
        train[0]


# JHMDB-Sentences

JH, JW = 20, 28


@pytest.fixture()
def jhmdb_root(tmp_path: Path) -> Path:
    root = tmp_path / "jhmdb"
    videos = {"run": ("runner_a", 8, 7), "wave": ("waver_b", 5, 5)}  # action: (video, pngs, masks)
    for action, (video, num_images, num_masks) in videos.items():
        image_dir = root / "Rename_Images" / action / video
        image_dir.mkdir(parents=True)
        for number in range(1, num_images + 1):
            Image.new("RGB", (JW, JH), (grey(number),) * 3).save(image_dir / f"{number:05d}.png")
        part_mask = np.zeros((JH, JW, num_masks), dtype=np.uint8)
        for t in range(num_masks):
            part_mask[t : t + 5, 3 : 3 + t + 2, t] = 1
        mask_dir = root / "puppet_mask" / action / video
        mask_dir.mkdir(parents=True)
        scipy.io.savemat(mask_dir / "puppet_mask.mat", {"part_mask": part_mask})
    (root / "jhmdb_annotation.txt").write_text("video_id,query\nrunner_a,A man  running\nwaver_b,a woman waving\n")
    return root


def test_evenly_spaced_frames():
    assert evenly_spaced_frames(7) == [2, 4, 6]
    assert evenly_spaced_frames(40) == [7, 21, 34]
    assert evenly_spaced_frames(2) == [1, 2]


def test_jhmdb_samples_windows_and_masks(jhmdb_root):
    dataset = JHMDBSentences(jhmdb_root, num_frames=3, transforms=PLAIN)
    # runner_a: 8 images but 7 masks -> frames 2, 4, 6 of 7; waver_b: 5 -> 1, 3, 5
    assert [(s.video, s.frame, s.total_frames) for s in dataset.samples] == [
        ("runner_a", 2, 7), ("runner_a", 4, 7), ("runner_a", 6, 7), ("waver_b", 1, 5), ("waver_b", 3, 5),
        ("waver_b", 5, 5),
    ]
    frames, target = dataset[3]  # waver_b frame 1: the window is clamped at the start
    assert target["frames"] == ["00001", "00001", "00002"] and frame_numbers(frames) == [1, 1, 2]
    assert target["annotated_index"] == 1 and target["valid"].tolist() == [0, 1, 0]
    assert target["image_id"] == "v_waver_b_f_1" and target["caption"] == "a woman waving"
    frames, target = dataset[1]  # runner_a frame 4: mask t=3 is rows 3..7, cols 3..7
    expected = torch.zeros(JH, JW)
    expected[3:8, 3:8] = 1
    assert torch.equal(target["masks"][1], expected) and target["masks"][[0, 2]].sum() == 0
    assert frame_numbers(frames) == [3, 4, 5]


def test_jhmdb_uses_mttr_metadata_when_present(jhmdb_root):
    entries = [
        ["runner_a", "./jhmdb_sentences/Rename_Images/run/runner_a/00007.png",
         "./jhmdb_sentences/puppet_mask/run/runner_a/puppet_mask.mat", 7, "a man running"],
    ]
    (jhmdb_root / "jhmdb_sentences_samples_metadata.json").write_text(json.dumps(entries))
    dataset = JHMDBSentences(jhmdb_root, num_frames=3, transforms=PLAIN)
    assert len(dataset) == 1
    frames, target = dataset[0]
    assert target["frames"] == ["00006", "00007", "00007"] and target["valid"].tolist() == [0, 1, 0]


def test_build_jhmdb(jhmdb_root):
    cfg = {"data_root": str(jhmdb_root), "data": {"num_frames": 2, "test_size": 10, "max_size": 100}}
    frames, target = build_dataset("jhmdb", "valid", cfg)[0]
    assert frames.shape == (2, 3, 10, 14) and target["masks"].shape == (2, 10, 14)
    with pytest.raises(ValueError, match="evaluation only"):
        build_dataset("jhmdb", "train", cfg)
