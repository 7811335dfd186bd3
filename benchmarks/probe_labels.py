"""What each RefShapes object is and what each sentence names, read from pixels and words alone.

The generator's own record of an object (``datasets.refshapes.SceneObject``) is not written to disk for the valid
split, so every object label here is derived from the frames and the palette-PNG annotations, identically for both
splits:

- **colour**: the ``datasets.refshapes.COLOURS`` entry nearest (Euclidean RGB) to the mean colour of the object's
  pixels over all its visible frames;
- **size**: "big" when the object's largest visible area exceeds the geometric mean of a small and a big shape's
  area (``RADIUS_FRACTION`` of the frame side, ``shape_area`` of a circle; the shapes are scaled to nearly equal
  areas, and big/small differ by a factor ~2.7);
- **shape**: the ``SHAPES`` entry whose ``shape_masks`` template, at the measured size's radius and centred on the
  mask's centroid, overlaps the object's best-visible mask (largest area among the frames where it does not touch
  the frame border) with the highest IoU; fitted from pixels, not read from ``train/meta.json``, so that the valid
  split gets it too;
- **motion**: "still" or the dominant direction of the centroid's displacement between the first and last *whole*
  frames (visible area >= ``WHOLE_AREA`` of the largest, not touching the border, so neither occlusion nor the
  frame edge moves the centroid). A still object's whole masks are identical; the slowest RefShapes mover covers
  over 2 px a frame, so ``MOTION_THRESHOLD_PX`` = 1 px separates them.

Sentence labels are the words of the generator's vocabulary that a sentence contains: a colour (``COLOURS``) or
shape (``SHAPES``) word when it names exactly one distinct one, a motion when it ends in a phrase of
``MOTION_PHRASES`` ("moving up", "that does not move").
"""
import math
import re
from dataclasses import asdict, dataclass

import numpy as np

from datasets.refshapes import COLOURS, MOTION_PHRASES, MOTIONS, RADIUS_FRACTION, SHAPES, shape_area, shape_masks

OBJECT_ATTRIBUTES = ("colour", "shape", "size", "motion")
SENTENCE_ATTRIBUTES = ("colour", "shape", "motion")
WHOLE_AREA = 0.97  # a moving shape's rasterised area varies by ~2 %
MOTION_THRESHOLD_PX = 1.0
# "the {d} moving up" -> "moving up": what a motion sentence ends with, per motion.
MOTION_ENDINGS = {motion: tuple(t.split("{d}")[1].strip() for t in templates)
                  for motion, templates in MOTION_PHRASES.items()}


@dataclass(frozen=True)
class ObjectLabels:
    colour: str
    shape: str
    size: str
    motion: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def nearest_colour(rgb: np.ndarray) -> str:
    """The ``COLOURS`` name nearest to the mean colour ``rgb`` [3]."""
    names = list(COLOURS)
    palette = np.array([COLOURS[name] for name in names], dtype=np.float64)  # [5, 3]
    return names[int(np.argmin(((palette - rgb[None]) ** 2).sum(axis=1)))]


def size_threshold(side: int) -> float:
    """The area in pixels between a small and a big shape in a frame of side ``side``."""
    small, big = (shape_area("circle", RADIUS_FRACTION[name] * side) for name in ("small", "big"))
    return math.sqrt(small * big)


def centroids(masks: np.ndarray) -> np.ndarray:
    """masks [T, H, W] bool -> [T, 2] (x, y) pixel-centre centroids (NaN where the mask is empty)."""
    ys, xs = np.mgrid[0:masks.shape[1], 0:masks.shape[2]].astype(np.float64) + 0.5
    area = masks.sum(axis=(1, 2)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([(masks * xs).sum(axis=(1, 2)) / area, (masks * ys).sum(axis=(1, 2)) / area], axis=1)


def touches_border(masks: np.ndarray) -> np.ndarray:
    """masks [T, H, W] -> [T] bool: some mask pixel lies on the frame's outer row or column."""
    return masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)


def fit_shape(mask: np.ndarray, radius: float) -> str:
    """The ``SHAPES`` template of ``radius`` centred on the centroid of ``mask`` [H, W] that overlaps it best."""
    centre = centroids(mask[None])  # [1, 2]

    def iou(shape: str) -> float:
        template = shape_masks(shape, radius, centre, mask.shape[0])[0]
        return (template & mask).sum() / (template | mask).sum()

    return max(SHAPES, key=iou)


def motion_of(masks: np.ndarray) -> str:
    """The motion word of an object from its masks [T, H, W] (module docstring)."""
    area = masks.sum(axis=(1, 2))
    whole = np.flatnonzero((area >= WHOLE_AREA * area.max()) & ~touches_border(masks))
    frames = whole if len(whole) >= 2 else np.flatnonzero(area > 0)
    centres = centroids(masks[[frames[0], frames[-1]]])
    displacement = centres[1] - centres[0]  # (dx, dy), y down
    if np.abs(displacement).max() < MOTION_THRESHOLD_PX:
        return "still"
    axis = int(np.argmax(np.abs(displacement)))
    direction = np.zeros(2)
    direction[axis] = np.sign(displacement[axis])
    return next(name for name, vector in MOTIONS.items() if tuple(direction) == vector)


def object_labels(frames: np.ndarray, ids: np.ndarray) -> dict[int, ObjectLabels]:
    """The labels of every object of a video.

    frames: [T, S, S, 3] uint8 RGB; ids: [T, S, S] object ids (0 = background) -> {obj_id: ObjectLabels}.
    """
    side = ids.shape[2]
    labels = {}
    for obj_id in (int(i) for i in np.unique(ids) if i != 0):
        masks = ids == obj_id  # [T, S, S]
        area = masks.sum(axis=(1, 2))
        size = "big" if area.max() > size_threshold(side) else "small"
        inside = np.where(touches_border(masks), 0, area)
        best = int(np.argmax(inside if inside.max() > 0 else area))
        labels[obj_id] = ObjectLabels(
            colour=nearest_colour(frames[masks].astype(np.float64).mean(axis=0)),
            shape=fit_shape(masks[best], RADIUS_FRACTION[size] * side),
            size=size,
            motion=motion_of(masks),
        )
    return labels


def _single_word(sentence: str, vocabulary) -> str | None:
    named = {word for word in re.findall(r"[a-z]+", sentence) if word in vocabulary}
    return named.pop() if len(named) == 1 else None


def sentence_labels(sentence: str) -> dict[str, str | None]:
    """The colour, shape and motion a (lower-case) sentence names, None for each it does not name unambiguously."""
    motion = next((m for m, endings in MOTION_ENDINGS.items() if sentence.endswith(endings)), None)
    return {"colour": _single_word(sentence, COLOURS), "shape": _single_word(sentence, SHAPES), "motion": motion}
