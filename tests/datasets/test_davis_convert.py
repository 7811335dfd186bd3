"""Ref-DAVIS17 -> Ref-YTVOS conversion on a mini DAVIS release with the four annotator text files."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import build_dataset
from datasets.davis import convert_davis_to_ytvos
from datasets.errors import DatasetFormatError

H, W = 16, 24
# video -> number of objects; one train video and one val video are misspelt in the text files.
TRAIN = {"bear": 2, "classic-car": 1}
VAL = {"dogs-scale": 1}
MISSPELT = {"classic-car": "clasic-car", "dogs-scale": "dog-scale"}


def write_davis(root: Path) -> tuple[Path, Path]:
    davis, text = root / "DAVIS", root / "davis_text_annotations"
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (davis / "ImageSets" / "2017" / "val.txt").write_text("\n".join(VAL) + "\n")
    for video, num_objects in {**TRAIN, **VAL}.items():
        images = davis / "JPEGImages" / "480p" / video
        masks = davis / "Annotations_unsupervised" / "480p" / video
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for frame in range(3):
            Image.new("RGB", (W, H), (40 * frame, 90, 160)).save(images / f"{frame:05d}.jpg")
            ids = np.zeros((H, W), dtype=np.uint8)
            for obj in range(1, num_objects + 1):
                ids[2 * obj : 2 * obj + 2, 1 + frame : 6 + frame] = obj
            mask = Image.fromarray(ids, mode="P")
            mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
            mask.save(masks / f"{frame:05d}.png")
    text.mkdir()
    files = {
        "Davis17_annot1.txt": ("utf-8", "a1"),
        "Davis17_annot1_full_video.txt": ("utf-8", "a1full"),
        "Davis17_annot2.txt": ("latin-1", "a2 café"),
        "Davis17_annot2_full_video.txt": ("latin-1", "a2full naïve"),
    }
    for name, (encoding, tag) in files.items():
        lines = []
        for video, num_objects in {**TRAIN, **VAL}.items():
            # objects listed in reverse order: the converter sorts them by id
            for obj in range(num_objects, 0, -1):
                lines.append(f'{MISSPELT.get(video, video)} {obj} "{tag} {video} object {obj}"')
        (text / name).write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return davis, text


def snapshot(folder: Path) -> dict[str, str]:
    files = [path for path in folder.rglob("*") if path.is_file()]
    return {str(path.relative_to(folder)): hashlib.md5(path.read_bytes()).hexdigest() for path in files}


@pytest.fixture()
def converted(tmp_path: Path):
    davis, text = write_davis(tmp_path / "src")
    before = snapshot(tmp_path / "src")
    out = convert_davis_to_ytvos(davis, text, tmp_path / "ref-davis")
    return tmp_path, out, before


def test_layout_and_copied_files(converted):
    tmp_path, out, before = converted
    assert sorted(p.name for p in out.iterdir()) == ["meta_expressions", "train", "valid"]
    for split, videos in (("train", TRAIN), ("valid", VAL)):
        assert sorted(p.name for p in (out / split / "JPEGImages").iterdir()) == sorted(videos)
        assert sorted(p.name for p in (out / split / "Annotations").iterdir()) == sorted(videos)
    source = tmp_path / "src" / "DAVIS" / "Annotations_unsupervised" / "480p" / "bear" / "00001.png"
    copy = out / "train" / "Annotations" / "bear" / "00001.png"
    assert copy.read_bytes() == source.read_bytes()
    assert snapshot(tmp_path / "src") == before  # sources untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref-davis", "src"]  # no staging folder left behind


def test_expressions_are_interleaved_per_object(converted):
    _, out, _ = converted
    meta = json.loads((out / "meta_expressions" / "train" / "meta_expressions.json").read_text(encoding="utf-8"))
    bear = meta["videos"]["bear"]
    assert bear["frames"] == ["00000", "00001", "00002"]
    expected = {}
    for index, obj in enumerate(("1", "2")):
        for k, tag in enumerate(("a1", "a1full", "a2 café", "a2full naïve")):
            expected[str(4 * index + k)] = {"exp": f"{tag} bear object {obj}", "obj_id": obj}
    assert bear["expressions"] == expected
    assert list(meta["videos"]["classic-car"]["expressions"]) == ["0", "1", "2", "3"]
    valid = json.loads((out / "meta_expressions" / "valid" / "meta_expressions.json").read_text(encoding="utf-8"))
    assert valid["videos"]["dogs-scale"]["expressions"]["2"] == {"exp": "a2 café dogs-scale object 1", "obj_id": "1"}


def test_converted_train_split_is_read_by_the_ytvos_loader(converted):
    _, out, _ = converted
    cfg = {
        "data_root": str(out), "seed": 0,
        "data": {"num_frames": 2, "max_skip": 1, "reverse_prob": 0.3, "sentences_per_clip": 1, "train_scales": [16],
                 "max_size": 24, "test_size": 16},
    }
    train = build_dataset("davis", "train", cfg)
    assert len(train) == (2 + 1) * 4 * 2  # (objects) x 4 expressions x 2 anchors of 3 frames
    frames, target = train[0]
    assert frames.shape == (2, 3, 16, 24) and target["valid"].tolist() == [1, 1]
    assert target["caption"] == "a1 bear object 1"
    frames, target = build_dataset("davis", "valid", cfg)[2]
    assert frames.shape[0] == 3 and target["caption"] == "a2 café dogs-scale object 1"


def test_existing_output_is_refused(converted):
    tmp_path, out, _ = converted
    with pytest.raises(FileExistsError, match="ref-davis"):
        convert_davis_to_ytvos(tmp_path / "src" / "DAVIS", tmp_path / "src" / "davis_text_annotations", out)


def test_missing_expression_is_an_error_and_leaves_nothing(tmp_path):
    davis, text = write_davis(tmp_path / "src")
    path = text / "Davis17_annot2_full_video.txt"
    lines = path.read_bytes().decode("latin-1").splitlines()
    path.write_bytes("\n".join(line for line in lines if not line.startswith("bear 2")).encode("latin-1"))
    with pytest.raises(DatasetFormatError, match="'bear', object 2.*Davis17_annot2_full_video.txt"):
        convert_davis_to_ytvos(davis, text, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # neither out nor a staging folder


def test_malformed_line_names_file_and_line(tmp_path):
    davis, text = write_davis(tmp_path / "src")
    with open(text / "Davis17_annot1.txt", "a", encoding="utf-8") as f:
        f.write("bear two no quotes\n")
    with pytest.raises(DatasetFormatError, match=r"Davis17_annot1.txt:5"):
        convert_davis_to_ytvos(davis, text, tmp_path / "out")


def test_command_line(tmp_path, capsys):
    from scripts.convert_davis_to_ytvos import main

    davis, text = write_davis(tmp_path / "src")
    main(["--davis_root", str(davis), "--text_root", str(text), "--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli" / "meta_expressions" / "valid" / "meta_expressions.json").is_file()
    assert "cli" in capsys.readouterr().out
