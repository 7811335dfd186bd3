"""RefShapes: procedurally generated referring-video data in the exact Ref-YouTube-VOS layout.

Each video shows 3-5 coloured shapes (circle, square, triangle, diamond; 2 sizes) moving in straight lines
(up, down, left, right) or standing still over a textured background. Objects overlap (the draw order is
their depth and the masks show only what is visible), enter and leave the frame, and the frames are JPEG
encoded. Most videos contain two or three *identical* shapes (same colour, shape and size) that move
differently, so that some expressions ("the red circle moving up") can only be resolved by motion.

Every expression is checked to refer to exactly one object over the whole clip:
- appearance: "the red square", "the triangle" (colour and/or shape unique in the video);
- size:       "the big triangle" (unique only once the size is named);
- motion:     "the red circle moving up" (the target has an identical twin; only motion tells them apart);
- position:   "the leftmost circle" (the target is the extreme of its group in *every* frame);
- relation:   "the circle left of the blue square" (true in every frame for the target and false in every
  frame for every other object of its group).
Position and relation hold in every frame so that any sub-clip a training sampler draws keeps the
sentence true. Motion words are tied to the frame order: a sampler must not reverse time on RefShapes, and
a horizontal flip must swap "left" and "right" in the sentence (as ReferFormer's flip does).

Output (``generate_refshapes``)::

    out_dir/meta_expressions/{train,valid}/meta_expressions.json
        {"videos": {vid: {"expressions": {"0": {"exp", "obj_id", "kind"}, ...}, "frames": ["00000", ...]}}}
    out_dir/{train,valid}/JPEGImages/<vid>/<frame>.jpg   RGB
    out_dir/{train,valid}/Annotations/<vid>/<frame>.png  palette PNG, pixel = object id, 0 = background
    out_dir/train/meta.json    {"videos": {vid: {"objects": {obj_id: {"category": shape, "frames": [...]}}}}}

``kind`` is an extra field that Ref-YouTube-VOS readers ignore. The valid split keeps ``obj_id`` and its
annotations so that it can be scored locally. Each video draws from its own generator seeded by
(seed, split, index), so the same seed gives byte-identical files.

MeViS layout (``generate_refshapes(..., layout="mevis")``, ``datasets/mevis.py``): the same videos and frames, and
besides their single-object expressions MeViS's second trait, expressions about **several** objects, whose target
is the union of their masks:
- group:        "the two red circles", "all the squares", "the big shapes" (every object with those attributes,
  at least two);
- group_motion: "the shapes moving left", "the circles that do not move" (the members of an attribute group that
  share a motion, at least two, when the group also holds objects that move otherwise).
They are drawn from a second generator per video, so the videos and single-object expressions are those of the
default layout, which stays byte-identical::

    out_dir/train/JPEGImages/<vid>/<frame>.jpg, train/meta_expressions.json, train/mask_dict.json
    out_dir/valid_u/...     the valid videos, with mask_dict.json (local scoring)
    out_dir/valid/...       the same videos without masks, standing in for the benchmark's server split

``meta_expressions.json``: ``{"videos": {vid: {"expressions": {"0": {"exp", "obj_id": [ids], "anno_id": [ids],
"kind"}}, "frames": [...]}}}`` (valid: ``exp`` only); ``mask_dict.json``: ``{anno_id: [COCO RLE, or null where
the object is not visible, per frame]}``, one anno id per object, numbered through the split.

RefCOCO layout (``layout="refcoco"``, ``datasets/refcoco.py``): one frame of each video (its middle one) as a still
image, in the COCO-format referring json of ReferFormer's RefCOCO release, so that image pretraining runs offline.
The videos are those of the default layout; the expressions are its single-object ones that a still image can
resolve (every kind but ``motion``) and whose object is visible in that frame::

    out_dir/train2014/RefShapes_<split>_<index:04d>.jpg            train and valid images
    out_dir/refcoco/instances_refcoco_{train,val}.json              valid -> val

Each json ``image`` is one (image, sentence) sample (``id``, ``file_name``, ``height``, ``width``, ``caption``,
``original_id``: the video index, ``kind``), with one ``annotation`` (``image_id``, ``segmentation``: compressed
RLE, ``bbox`` xywh, ``area``, ``category_id``: the shape, ``iscrowd`` 0).
"""
import json
import math
import shutil
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from util.atomic_write import atomic_directory
from util.davis_palette import davis_palette
from util.errors import UserInputError
from util.mask_rle import mask_to_rle

SPLITS = ("train", "valid")
LAYOUTS = ("ytvos", "mevis", "refcoco")
# RefShapes split -> the MeViS split folders that hold its videos (the first one with masks).
MEVIS_SPLITS = {"train": ("train",), "valid": ("valid_u", "valid")}
KINDS = ("appearance", "size", "motion", "position", "relation")
GROUP_KINDS = ("group", "group_motion")
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (225, 35, 35),
    "green": (35, 190, 50),
    "blue": (40, 80, 235),
    "yellow": (240, 215, 25),
    "purple": (160, 50, 210),
}
RADIUS_FRACTION = {"small": 0.07, "big": 0.115}  # of the frame side; the area ratio is ~2.7
MOTIONS = {"up": (0.0, -1.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0), "still": (0.0, 0.0)}
FRAME_STRIDE = 5  # released Ref-YouTube-VOS frames are every 5th frame of the source video
JPEG_QUALITY = 90
MIN_FRAMES = 2  # motion needs at least two frames
MAX_FRAMES = 20000  # frame names have 5 digits
MIN_SIZE = 32
MAX_ATTEMPTS = 200
# How often each kind is picked among those an object allows; motion is favoured since only twins allow it.
KIND_WEIGHTS = {"appearance": 1.0, "size": 1.5, "motion": 5.0, "position": 1.0, "relation": 3.0}

# Phrase templates; "{d}" is the target's description, "{r}" the reference object's.
SIZE_WORDS = {"small": ("small", "little"), "big": ("big", "large")}
NOUNS_WITHOUT_SHAPE = ("shape", "object")
MOTION_PHRASES = {
    "up": ("the {d} moving up", "the {d} going up", "the {d} that moves upwards"),
    "down": ("the {d} moving down", "the {d} going down", "the {d} that moves downwards"),
    "left": ("the {d} moving left", "the {d} going to the left", "the {d} that moves left"),
    "right": ("the {d} moving right", "the {d} going to the right", "the {d} that moves right"),
    "still": ("the {d} staying still", "the {d} that does not move", "the {d} standing still"),
}
POSITION_PHRASES = {
    "left": ("the leftmost {d}", "the {d} furthest to the left"),
    "right": ("the rightmost {d}", "the {d} furthest to the right"),
    "top": ("the topmost {d}", "the highest {d}", "the {d} at the top"),
    "bottom": ("the lowest {d}", "the bottommost {d}", "the {d} at the bottom"),
}
RELATION_PHRASES = {
    "left": ("the {d} left of the {r}", "the {d} to the left of the {r}"),
    "right": ("the {d} right of the {r}", "the {d} to the right of the {r}"),
    "above": ("the {d} above the {r}",),
    "below": ("the {d} below the {r}", "the {d} under the {r}"),
}
# Several objects: "{d}" is the plural description ("red circles"), "{n}" their number in words; the motion
# phrases are the single-object ones with a plural verb.
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
GROUP_PHRASES = ("the {d}", "all the {d}", "the {n} {d}")
GROUP_MOTION_PHRASES = {motion: tuple(p.replace("moves", "move").replace("does not", "do not") for p in phrases)
                        for motion, phrases in MOTION_PHRASES.items()}
POSITION_AXES = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}  # (axis, sign), y down
RELATION_AXES = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}
ATTRIBUTES = ("size", "colour", "shape")
ATTRIBUTE_SUBSETS = [set(c) for n in range(4) for c in combinations(ATTRIBUTES, n)]


@dataclass
class SceneObject:
    """One shape of a video. ``centres``: [T, 2] (x, y) in pixels, possibly outside the frame."""

    obj_id: int
    shape: str
    colour: str
    size: str
    motion: str
    radius: float
    centres: np.ndarray

    def attribute(self, name: str) -> str:
        return getattr(self, name)


@dataclass
class Video:
    frames: np.ndarray  # [T, S, S, 3] uint8
    labels: np.ndarray  # [T, S, S] uint8, object ids
    objects: list[SceneObject]
    expressions: list[tuple[str, int, str]]  # (sentence, obj_id, kind)


def frame_names(num_frames: int) -> list[str]:
    """Sparse 5-digit frame names: "00000", "00005", ... as in Ref-YouTube-VOS."""
    return [f"{FRAME_STRIDE * i:05d}" for i in range(num_frames)]


def shape_area(shape: str, radius: float) -> float:
    """Area in pixels of a fully visible shape (matches ``shape_masks``)."""
    if shape == "circle":
        return math.pi * radius**2
    if shape == "square":
        return (2 * 0.886 * radius) ** 2
    if shape == "triangle":
        return 3 * math.sqrt(3) / 4 * (1.5 * radius) ** 2
    return 2 * (1.25 * radius) ** 2  # diamond


def shape_masks(shape: str, radius: float, centres: np.ndarray, size: int) -> np.ndarray:
    """Rasterise one shape in every frame. centres [T, 2] (x, y) -> masks [T, size, size] bool.

    The square, triangle and diamond are scaled so that their areas are close to the circle's, so that
    "big" and "small" mean the same across shapes.
    """
    pixel_centres = np.arange(size, dtype=np.float32) + 0.5
    dx = pixel_centres[None, None, :] - centres[:, 0, None, None].astype(np.float32)  # [T, 1, S]
    dy = pixel_centres[None, :, None] - centres[:, 1, None, None].astype(np.float32)  # [T, S, 1]
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= 0.886 * radius) & (np.abs(dy) <= 0.886 * radius)
    if shape == "triangle":
        # Equilateral, pointing up, circumradius R: inside the three half-planes at distance R/2 from the centre.
        half = 0.75 * radius
        slanted = 0.5 * (1.5 * radius)
        return (dy <= half) & (0.866 * dx - 0.5 * dy <= slanted) & (-0.866 * dx - 0.5 * dy <= slanted)
    return np.abs(dx) + np.abs(dy) <= 1.25 * radius  # diamond


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random low-saturation texture (gradient, stripes, blobs or checker). -> [S, S, 3] float32 in 0..255."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(4)
    angle = rng.uniform(0, 2 * np.pi)
    projection = xs * np.cos(angle) + ys * np.sin(angle)  # [S, S]
    if kind == 0:
        pattern = (projection - projection.min()) / (projection.max() - projection.min())
    elif kind == 1:
        period = rng.uniform(size / 10, size / 4)
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * projection / period + rng.uniform(0, 2 * np.pi))
    elif kind == 2:
        cells = int(rng.integers(3, 8))
        coarse = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
        pattern = np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR))
    else:
        cell = int(rng.integers(max(2, size // 12), max(3, size // 5)))
        pattern = ((xs // cell + ys // cell) % 2).astype(np.float32)
    colours = rng.uniform(45, 185, size=(2, 1)) + rng.uniform(-20, 20, size=(2, 3))  # grey + a tint
    image = colours[0] * (1 - pattern[..., None]) + colours[1] * pattern[..., None]
    grain = rng.normal(0, 6, size=(size, size, 1))
    return (image + grain).astype(np.float32)


def sample_objects(rng: np.random.Generator, num_frames: int, size: int) -> list[SceneObject]:
    """Draw 3-5 objects whose colours and shapes come from a small per-video set, so that distractors
    share colour or shape with each other; usually one group of 2-3 identical twins with distinct motions."""
    num_objects = int(rng.choice([3, 4, 5], p=[0.3, 0.4, 0.3]))
    colours = list(rng.choice(list(COLOURS), size=int(rng.integers(2, 4)), replace=False))
    shapes = list(rng.choice(SHAPES, size=int(rng.integers(2, 4)), replace=False))

    def appearance() -> tuple[str, str, str]:
        return (str(rng.choice(colours)), str(rng.choice(shapes)), str(rng.choice(list(RADIUS_FRACTION))))

    appearances = []
    if rng.random() < 0.85:
        twins = 3 if num_objects >= 4 and rng.random() < 0.2 else 2
        appearances += [appearance()] * twins
    while len(appearances) < num_objects:
        appearances.append(appearance())

    motions = []
    for look in appearances:
        taken = {m for other, m in zip(appearances, motions) if other == look}
        free = [m for m in MOTIONS if m not in taken]
        weights = np.array([0.5 if m == "still" else 1.0 for m in free])
        motions.append(str(rng.choice(free, p=weights / weights.sum())))

    objects = []
    for index, ((colour, shape, size_name), motion) in enumerate(zip(appearances, motions)):
        radius = RADIUS_FRACTION[size_name] * size
        centres = _trajectory(rng, motion, radius, num_frames, size)
        objects.append(SceneObject(index + 1, shape, colour, size_name, motion, radius, centres))
    return objects


def _trajectory(rng: np.random.Generator, motion: str, radius: float, num_frames: int, size: int) -> np.ndarray:
    """Straight-line centres [T, 2]; moving objects may start or end outside the frame (enter / leave)."""
    direction = np.array(MOTIONS[motion])
    start = rng.uniform(radius, size - radius, size=2)
    if motion != "still":
        distance = rng.uniform(0.25, 0.5) * size
        axis = int(np.argmax(np.abs(direction)))
        along = rng.uniform(-0.18 * size, 1.18 * size - distance)
        start[axis] = along if direction[axis] > 0 else size - along
        direction = direction * distance / (num_frames - 1)
    return start[None, :] + np.arange(num_frames)[:, None] * direction[None, :]


def render(objects: list[SceneObject], depth: list[int], rng: np.random.Generator, num_frames: int,
           size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the objects back to front (``depth``: indices into ``objects``, farthest first).

    Returns frames [T, S, S, 3] uint8 and labels [T, S, S] uint8 (object id of the visible object, 0 = none).
    """
    labels = np.zeros((num_frames, size, size), dtype=np.uint8)
    for index in depth:
        obj = objects[index]
        labels[shape_masks(obj.shape, obj.radius, obj.centres, size)] = obj.obj_id
    colour_of_id = np.zeros((len(objects) + 1, 3), dtype=np.float32)
    for obj in objects:
        colour_of_id[obj.obj_id] = COLOURS[obj.colour]
    sensor_noise = 3 * rng.standard_normal((num_frames, size, size, 3), dtype=np.float32)
    frames = np.where(labels[..., None] > 0, colour_of_id[labels], background(rng, size)[None]) + sensor_noise
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8), labels  # + 0.5 then truncate: round to nearest


def _matches(objects: list[SceneObject], target: SceneObject, attributes: set[str]) -> list[SceneObject]:
    return [o for o in objects if all(o.attribute(a) == target.attribute(a) for a in attributes)]


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _describe(rng: np.random.Generator, obj: SceneObject, attributes: set[str]) -> str:
    """Noun phrase naming ``attributes`` of ``obj`` in English order: "big red circle", "small shape"."""
    words = []
    if "size" in attributes:
        words.append(_pick(rng, SIZE_WORDS[obj.size]))
    if "colour" in attributes:
        words.append(obj.colour)
    words.append(obj.shape if "shape" in attributes else _pick(rng, NOUNS_WITHOUT_SHAPE))
    return " ".join(words)


def _always(condition: np.ndarray) -> bool:
    return bool(np.all(condition))


def _is_extreme(target: SceneObject, other: SceneObject, direction: str, margin: float) -> bool:
    """Whether ``target`` lies beyond ``other`` towards ``direction`` by ``margin`` px in every frame."""
    axis, sign = POSITION_AXES[direction]
    return _always(sign * (target.centres[:, axis] - other.centres[:, axis]) >= margin)


def candidate_expressions(rng: np.random.Generator, objects: list[SceneObject], target: SceneObject,
                          size: int) -> dict[str, list[str]]:
    """Every sentence of each kind that refers to ``target`` and to no other object over the whole clip."""
    margin = 0.04 * size
    candidates = {kind: [] for kind in KINDS}
    has_twin = len(_matches(objects, target, set(ATTRIBUTES))) > 1
    unique_names = {o.obj_id: [a for a in ATTRIBUTE_SUBSETS if a and len(_matches(objects, o, a)) == 1]
                    for o in objects}
    for attributes in ATTRIBUTE_SUBSETS:
        group = _matches(objects, target, attributes)
        unique = len(group) == 1
        if unique and attributes and "size" not in attributes:
            candidates["appearance"].append(f"the {_describe(rng, target, attributes)}")
        if unique and "size" in attributes and len(_matches(objects, target, attributes - {"size"})) > 1:
            candidates["size"].append(f"the {_describe(rng, target, attributes)}")
        if has_twin and [o for o in group if o.motion == target.motion] == [target]:
            template = _pick(rng, MOTION_PHRASES[target.motion])
            candidates["motion"].append(template.format(d=_describe(rng, target, attributes)))
        if len(group) >= 2:
            for direction, templates in POSITION_PHRASES.items():
                if all(_is_extreme(target, o, direction, margin) for o in group if o is not target):
                    template = _pick(rng, templates)
                    candidates["position"].append(template.format(d=_describe(rng, target, attributes)))
        candidates["relation"] += _relations(rng, objects, target, attributes, group, unique_names, margin)
    return candidates


def _relations(rng: np.random.Generator, objects: list[SceneObject], target: SceneObject, attributes: set[str],
               group: list[SceneObject], unique_names: dict[int, list[set[str]]], margin: float) -> list[str]:
    """"the {target's group} <relation> the {reference}" sentences. ``group``: the objects sharing ``attributes``
    with the target; without the reference it must keep >= 2 members, of which only the target satisfies the
    relation (in every frame, by ``margin``) and every other one fails it in every frame. ``unique_names``:
    obj_id -> attribute sets that name that object uniquely (a reference needs one)."""
    sentences = []
    for reference in objects:
        others = [o for o in group if o is not reference]
        if reference is target or len(others) < 2 or not unique_names[reference.obj_id]:
            continue
        for relation, templates in RELATION_PHRASES.items():
            axis, sign = RELATION_AXES[relation]
            offsets = [sign * (o.centres[:, axis] - reference.centres[:, axis]) for o in others]
            holds = [_always(offset >= margin) if o is target else _always(offset <= 0)
                     for o, offset in zip(others, offsets)]
            if all(holds):
                name = _pick(rng, unique_names[reference.obj_id])
                template = _pick(rng, templates)
                sentences.append(template.format(d=_describe(rng, target, attributes),
                                                 r=_describe(rng, reference, name)))
    return sentences


def choose_expressions(rng: np.random.Generator, objects: list[SceneObject], size: int) -> list[tuple[str, int, str]]:
    """One or two expressions of distinct kinds per object, motion favoured where it is possible.

    Returns (sentence, obj_id, kind) triples, or an empty list when some object cannot be referred to.
    """
    chosen = []
    for target in objects:
        candidates = {k: v for k, v in candidate_expressions(rng, objects, target, size).items() if v}
        if not candidates:
            return []
        kinds = list(candidates)
        weights = np.array([KIND_WEIGHTS[k] for k in kinds])
        count = min(len(kinds), 1 + int(rng.random() < 0.5))
        for kind in rng.choice(kinds, size=count, replace=False, p=weights / weights.sum()):
            sentences = candidates[str(kind)]
            chosen.append((sentences[int(rng.integers(len(sentences)))], target.obj_id, str(kind)))
    return chosen


def group_candidates(rng: np.random.Generator, objects: list[SceneObject]) -> dict[str, list[tuple[str, list[int]]]]:
    """Every (sentence, sorted obj_ids) of each group kind: a sentence that refers to exactly those objects, two or
    more, over the whole clip (module docstring)."""
    candidates = {kind: [] for kind in GROUP_KINDS}
    seen = set()
    for attributes in ATTRIBUTE_SUBSETS:
        for representative in objects:
            group = _matches(objects, representative, attributes)
            key = (tuple(sorted(attributes)), tuple(o.obj_id for o in group))
            if key in seen:
                continue
            seen.add(key)
            if attributes and len(group) >= 2:
                template = _pick(rng, GROUP_PHRASES)
                sentence = template.format(d=_describe(rng, representative, attributes) + "s",
                                           n=NUMBER_WORDS[len(group)])
                candidates["group"].append((sentence, sorted(o.obj_id for o in group)))
            for motion, templates in GROUP_MOTION_PHRASES.items():
                movers = [o for o in group if o.motion == motion]
                if 2 <= len(movers) < len(group):
                    sentence = _pick(rng, templates).format(d=_describe(rng, representative, attributes) + "s")
                    candidates["group_motion"].append((sentence, sorted(o.obj_id for o in movers)))
    return candidates


def choose_group_expressions(rng: np.random.Generator, objects: list[SceneObject]) -> list[tuple[str, list[int], str]]:
    """One or two multi-object expressions of distinct kinds, as (sentence, obj_ids, kind); none when the scene
    has no group of two or more objects that a sentence can name."""
    candidates = {kind: options for kind, options in group_candidates(rng, objects).items() if options}
    kinds = [str(kind) for kind in rng.permutation(sorted(candidates))]
    chosen = []
    for kind in kinds[:1 + int(rng.random() < 0.5)]:
        sentence, obj_ids = candidates[kind][int(rng.integers(len(candidates[kind])))]
        chosen.append((sentence, obj_ids, kind))
    return chosen


def generate_video(rng: np.random.Generator, num_frames: int, size: int) -> Video:
    """Sample scenes until every object is well visible in at least half of the frames and each one can be
    referred to uniquely, then render it."""
    for _ in range(MAX_ATTEMPTS):
        objects = sample_objects(rng, num_frames, size)
        depth = [int(i) for i in rng.permutation(len(objects))]
        frames, labels = render(objects, depth, rng, num_frames, size)
        if not all(_mostly_visible(obj, labels) for obj in objects):
            continue
        expressions = choose_expressions(rng, objects, size)
        if expressions:
            return Video(frames, labels, objects, expressions)
    raise RuntimeError(f"RefShapes could not build a valid {size}x{size} scene in {MAX_ATTEMPTS} attempts; "
                       f"use a larger size.")


def _mostly_visible(obj: SceneObject, labels: np.ndarray) -> bool:
    """At least 20 % of the shape's area is visible in at least half of the frames."""
    visible = (labels == obj.obj_id).sum(axis=(1, 2))  # [T]
    return int((visible >= 0.2 * shape_area(obj.shape, obj.radius)).sum()) * 2 >= len(labels)


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """An independent generator per (seed, split, video index)."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def group_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of a video's multi-object expressions, independent of ``video_rng``'s stream."""
    return np.random.default_rng([seed, SPLITS.index(split), index, 1])


def write_frames(image_dir: Path, frames: np.ndarray) -> None:
    """Write a video's frames ``[T, S, S, 3]`` as ``image_dir/<frame>.jpg``."""
    image_dir.mkdir(parents=True)
    for frame_name, frame in zip(frame_names(len(frames)), frames):
        Image.fromarray(frame).save(image_dir / f"{frame_name}.jpg", quality=JPEG_QUALITY)


def write_video(split_dir: Path, name: str, video: Video) -> None:
    """Write the JPEG frames and the palette PNG annotations of one video."""
    palette = davis_palette()
    annotation_dir = split_dir / "Annotations" / name
    write_frames(split_dir / "JPEGImages" / name, video.frames)
    annotation_dir.mkdir(parents=True)
    size = video.labels.shape[1]
    for frame_name, label in zip(frame_names(len(video.frames)), video.labels):
        annotation = Image.frombytes("P", (size, size), np.ascontiguousarray(label).tobytes())
        annotation.putpalette(palette)
        annotation.save(annotation_dir / f"{frame_name}.png")


def _check_arguments(num_videos: int, num_valid_videos: int, num_frames: int, size: int, seed: int,
                     layout: str) -> None:
    if layout not in LAYOUTS:
        raise UserInputError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    if num_videos < 1:
        raise UserInputError(f"RefShapes needs at least 1 training video, got num_videos={num_videos}.")
    if num_valid_videos < 0:
        raise UserInputError(f"num_valid_videos must be >= 0, got {num_valid_videos}.")
    if not MIN_FRAMES <= num_frames <= MAX_FRAMES:
        raise UserInputError(f"num_frames must be in [{MIN_FRAMES}, {MAX_FRAMES}] (motion needs two frames; frame "
                             f"names have 5 digits), got {num_frames}.")
    if size < MIN_SIZE:
        raise UserInputError(f"size must be >= {MIN_SIZE} pixels so that small shapes stay recognisable, got {size}.")
    if seed < 0:
        raise UserInputError(f"seed must be >= 0, got {seed}.")


def generate_refshapes(out_dir, num_videos: int = 200, num_valid_videos: int = 40, num_frames: int = 16,
                       size: int = 128, seed: int = 0, layout: str = "ytvos") -> None:
    """Generate RefShapes into ``out_dir`` (absent or empty) in the Ref-YouTube-VOS layout, or with
    ``layout="mevis"`` in the MeViS layout with multi-object expressions added (module docstring).

    The dataset is built in a temporary sibling folder and renamed into place, so ``out_dir`` is either
    complete or untouched. Raises ValueError for bad arguments and FileExistsError if ``out_dir`` is not empty.
    """
    _check_arguments(num_videos, num_valid_videos, num_frames, size, seed, layout)
    generate = {"ytvos": _generate_split, "mevis": _generate_mevis_split, "refcoco": _generate_refcoco_split}[layout]
    with atomic_directory(out_dir) as staging:
        for split, count in zip(SPLITS, (num_videos, num_valid_videos)):
            generate(staging, split, count, num_frames, size, seed)


def _generate_split(root: Path, split: str, count: int, num_frames: int, size: int, seed: int) -> None:
    names = frame_names(num_frames)
    expressions_json, objects_json = {}, {}
    (root / split / "JPEGImages").mkdir(parents=True)
    (root / split / "Annotations").mkdir(parents=True)
    for index in range(count):
        name = f"rs_{split}_{index:04d}"
        video = generate_video(video_rng(seed, split, index), num_frames, size)
        write_video(root / split, name, video)
        expressions_json[name] = {
            "expressions": {str(i): {"exp": sentence, "obj_id": str(obj_id), "kind": kind}
                            for i, (sentence, obj_id, kind) in enumerate(video.expressions)},
            "frames": names,
        }
        objects_json[name] = {"objects": {
            str(obj.obj_id): {"category": obj.shape,
                              "frames": [f for f, lab in zip(names, video.labels) if (lab == obj.obj_id).any()]}
            for obj in video.objects}}
    meta_dir = root / "meta_expressions" / split
    meta_dir.mkdir(parents=True)
    (meta_dir / "meta_expressions.json").write_text(json.dumps({"videos": expressions_json}, indent=1))
    if split == "train":
        (root / split / "meta.json").write_text(json.dumps({"videos": objects_json}, indent=1))


def object_rles(video: Video) -> dict[int, list[dict | None]]:
    """obj_id -> per frame the COCO RLE of the object's visible pixels, None where it is not visible."""
    return {obj.obj_id: [mask_to_rle(label == obj.obj_id) if (label == obj.obj_id).any() else None
                         for label in video.labels]
            for obj in video.objects}


def _generate_mevis_split(root: Path, split: str, count: int, num_frames: int, size: int, seed: int) -> None:
    """RefShapes ``split`` in the MeViS layout: its videos in every folder of ``MEVIS_SPLITS[split]``, the
    json and ``mask_dict.json`` with the ground truth in the first, ``exp`` and ``frames`` only in ``valid``."""
    names = frame_names(num_frames)
    folders = MEVIS_SPLITS[split]
    metas, mask_dict = {folder: {} for folder in folders}, {}
    for folder in folders:
        (root / folder / "JPEGImages").mkdir(parents=True)
    for index in range(count):
        name = f"rs_{split}_{index:04d}"
        video = generate_video(video_rng(seed, split, index), num_frames, size)
        groups = choose_group_expressions(group_rng(seed, split, index), video.objects)
        anno_of = {}
        for obj_id, rles in object_rles(video).items():
            anno_of[obj_id] = len(mask_dict)
            mask_dict[str(anno_of[obj_id])] = rles
        expressions = [(sentence, [obj_id], kind) for sentence, obj_id, kind in video.expressions] + groups
        write_frames(root / folders[0] / "JPEGImages" / name, video.frames)
        metas[folders[0]][name] = {
            "expressions": {str(i): {"exp": sentence, "obj_id": obj_ids, "anno_id": [anno_of[o] for o in obj_ids],
                                     "kind": kind}
                            for i, (sentence, obj_ids, kind) in enumerate(expressions)},
            "frames": names,
        }
        for folder in folders[1:]:
            shutil.copytree(root / folders[0] / "JPEGImages" / name, root / folder / "JPEGImages" / name)
            metas[folder][name] = {"expressions": {str(i): {"exp": sentence} for i, (sentence, _, _) in
                                                   enumerate(expressions)},
                                   "frames": names}
    for folder in folders:
        (root / folder / "meta_expressions.json").write_text(json.dumps({"videos": metas[folder]}, indent=1))
    (root / folders[0] / "mask_dict.json").write_text(json.dumps(mask_dict))


REFCOCO_SPLITS = {"train": "train", "valid": "val"}  # RefShapes split -> RefCOCO json split
STILL_KINDS = ("appearance", "size", "position", "relation")  # what a single frame can resolve (not motion)


def _generate_refcoco_split(root: Path, split: str, count: int, num_frames: int, size: int, seed: int) -> None:
    """RefShapes ``split`` as still images in the RefCOCO json layout (module docstring)."""
    image_dir = root / "train2014"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    frame = num_frames // 2
    for index in range(count):
        video = generate_video(video_rng(seed, split, index), num_frames, size)
        file_name = f"RefShapes_{split}_{index:04d}.jpg"
        Image.fromarray(video.frames[frame]).save(image_dir / file_name, quality=JPEG_QUALITY)
        shapes = {obj.obj_id: obj.shape for obj in video.objects}
        for sentence, obj_id, kind in video.expressions:
            mask = video.labels[frame] == obj_id
            if kind not in STILL_KINDS or not mask.any():
                continue
            sample_id = len(images)
            ys, xs = np.nonzero(mask)
            images.append({"id": sample_id, "file_name": file_name, "height": size, "width": size,
                           "caption": sentence, "original_id": index, "kind": kind})
            annotations.append({"id": sample_id, "image_id": sample_id, "segmentation": mask_to_rle(mask),
                                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                         int(ys.max() - ys.min() + 1)],
                                "area": int(mask.sum()), "category_id": SHAPES.index(shapes[obj_id]) + 1,
                                "iscrowd": 0})
    json_dir = root / "refcoco"
    json_dir.mkdir(exist_ok=True)
    categories = [{"id": i + 1, "name": shape} for i, shape in enumerate(SHAPES)]
    (json_dir / f"instances_refcoco_{REFCOCO_SPLITS[split]}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
