"""Ref-DAVIS17: conversion of the official DAVIS-2017 release and its text annotations to the
Ref-YouTube-VOS layout, which the Ref-YTVOS loader then reads.

Sources (left untouched; files are copied)::

    <davis_root>/ImageSets/2017/{train,val}.txt              60 / 30 video names
    <davis_root>/JPEGImages/480p/<video>/<frame>.jpg
    <davis_root>/Annotations_unsupervised/480p/<video>/<frame>.png
    <text_root>/Davis17_annot1.txt, Davis17_annot1_full_video.txt   (utf-8)
    <text_root>/Davis17_annot2.txt, Davis17_annot2_full_video.txt   (latin-1)
        one line per object: video obj_id "expression"

Output: ``<out>/{train,valid}/{JPEGImages,Annotations}/<video>/`` and
``<out>/meta_expressions/{train,valid}/meta_expressions.json`` with four expressions per object,
interleaved annot1-first, annot1-full, annot2-first, annot2-full (``exp_id = 4 * object_index + k``),
``obj_id`` kept in both splits (DAVIS val has ground truth).
"""
import json
import os
import shutil
from pathlib import Path

from datasets.errors import DatasetFormatError
from util.atomic_write import atomic_directory

# (file name, encoding) in the order of the four expressions of an object.
TEXT_FILES = (
    ("Davis17_annot1.txt", "utf-8"),
    ("Davis17_annot1_full_video.txt", "utf-8"),
    ("Davis17_annot2.txt", "latin-1"),
    ("Davis17_annot2_full_video.txt", "latin-1"),
)
# Video names misspelt in the text annotations.
VIDEO_NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}
SPLITS = {"train": "train", "val": "valid"}  # DAVIS ImageSets name -> Ref-YTVOS split name


def read_split(davis_root: Path, name: str) -> list[str]:
    """Video names of ``ImageSets/2017/<name>.txt``."""
    path = davis_root / "ImageSets" / "2017" / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected the DAVIS-2017 trainval release under {davis_root}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def parse_expression_line(line: str, path: Path, line_number: int) -> tuple[str, str, str]:
    """``video obj_id "expression"`` -> ``(video, obj_id, expression)``, video names fixed up."""
    parts = line.split(maxsplit=2)
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[2]) < 2 or parts[2][0] != '"' or parts[2][-1] != '"':
        raise DatasetFormatError(f'{path}:{line_number}: expected `video obj_id "expression"`, got {line!r}')
    video, obj_id, quoted = parts
    return VIDEO_NAME_FIXES.get(video, video), obj_id, quoted[1:-1]


def read_expressions(path: Path, encoding: str) -> dict[str, dict[str, str]]:
    """``{video: {obj_id: expression}}`` from one annotator file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: unzip davis_text_annotations.zip into the text root")
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as error:
        raise DatasetFormatError(f"{path} is not {encoding} text ({error})") from error
    videos: dict[str, dict[str, str]] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            video, obj_id, expression = parse_expression_line(line.strip(), path, line_number)
            videos.setdefault(video, {})[obj_id] = expression
    return videos


def video_expressions(video: str, annotations: list[dict], paths: list[Path]) -> dict[str, dict[str, str]]:
    """The interleaved ``{exp_id: {"exp", "obj_id"}}`` of one video from the four annotator files."""
    objects = sorted(annotations[0].get(video, {}), key=int)
    if not objects:
        raise DatasetFormatError(f"video {video!r} has no expression in {paths[0]}")
    expressions = {}
    for object_index, obj_id in enumerate(objects):
        for k, (annotation, path) in enumerate(zip(annotations, paths)):
            if obj_id not in annotation.get(video, {}):
                raise DatasetFormatError(f"video {video!r}, object {obj_id}: no expression in {path}")
            expressions[str(4 * object_index + k)] = {"exp": annotation[video][obj_id], "obj_id": obj_id}
    return expressions


def _copy_video(source_images: Path, source_masks: Path, split_dir: Path, video: str) -> list[str]:
    """Copy one video's frames and masks; returns its sorted frame names."""
    for folder in (source_images, source_masks):
        if not folder.is_dir():
            raise FileNotFoundError(f"video {video!r}: {folder} is missing")
    frames = sorted(name[: -len(".jpg")] for name in os.listdir(source_images) if name.endswith(".jpg"))
    if not frames:
        raise DatasetFormatError(f"video {video!r}: no .jpg frame in {source_images}")
    for kind, source, suffix in (("JPEGImages", source_images, ".jpg"), ("Annotations", source_masks, ".png")):
        target = split_dir / kind / video
        target.mkdir(parents=True)
        for frame in frames:
            path = source / f"{frame}{suffix}"
            if not path.is_file():
                raise FileNotFoundError(f"video {video!r}, frame {frame!r}: {path} is missing")
            shutil.copy2(path, target / f"{frame}{suffix}")
    return frames


def convert_davis_to_ytvos(davis_root: str | Path, text_root: str | Path, out: str | Path) -> Path:
    """Write the Ref-YTVOS-layout copy of Ref-DAVIS17 to ``out`` (which must not exist yet).

    Everything is written to a temporary sibling folder first and renamed at the end
    (``util.atomic_write.atomic_directory``), so ``out`` is either complete or absent. Returns ``out``.
    """
    davis_root, text_root, out = Path(davis_root), Path(text_root), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another output folder")
    paths = [text_root / name for name, _ in TEXT_FILES]
    annotations = [read_expressions(path, encoding) for path, (_, encoding) in zip(paths, TEXT_FILES)]
    splits = {ytvos: read_split(davis_root, davis) for davis, ytvos in SPLITS.items()}

    with atomic_directory(out) as staging:
        for split, videos in splits.items():
            meta = {}
            for video in videos:
                frames = _copy_video(
                    davis_root / "JPEGImages" / "480p" / video,
                    davis_root / "Annotations_unsupervised" / "480p" / video,
                    staging / split,
                    video,
                )
                meta[video] = {"expressions": video_expressions(video, annotations, paths), "frames": frames}
            meta_dir = staging / "meta_expressions" / split
            meta_dir.mkdir(parents=True)
            with open(meta_dir / "meta_expressions.json", "w", encoding="utf-8") as f:
                json.dump({"videos": meta}, f, ensure_ascii=False)
    return out
