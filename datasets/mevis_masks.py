"""MeViS ground truth: ``mask_dict.json`` read once, checked, and kept in flat arrays that DataLoader workers share.

``mask_dict.json`` maps an ``anno_id`` (as a string) to one COCO RLE ``{"size": [H, W], "counts": str}`` or
``null`` per frame of its video, ``null`` where the object is absent. The train file is several GB. It is parsed
once; only the anno ids that the split's expressions use are kept, and their RLE strings are packed into one
uint8 array with offsets. Forked DataLoader workers then share those pages: millions of small Python objects
would be copied into every worker, since reference counting writes to each object a worker touches.
"""
import json
from pathlib import Path

import numpy as np

from datasets.errors import DatasetFormatError
from util.mask_rle import check_rle, rle_to_mask


class MaskStore:
    """The packed RLE masks of a split: per anno id, one entry per frame of its video.

    Args:
        path: the ``mask_dict.json`` they come from (named in errors).
        counts: uint8 ``[N]``, the ``counts`` strings of all present entries, end to end.
        offsets: int64 ``[E + 1]``, entry ``e``'s string is ``counts[offsets[e]:offsets[e + 1]]``.
        present: bool ``[E]``, False where the json holds ``null``.
        first: anno id -> index of the entry of its video's frame 0 (its frames follow in order).
        sizes: video -> ``(H, W)`` of its masks, None when none of its entries is present.
        frames: video -> frame names (named in errors).
    """

    def __init__(self, path: Path, counts: np.ndarray, offsets: np.ndarray, present: np.ndarray,
                 first: dict[str, int], sizes: dict[str, tuple[int, int] | None], frames: dict[str, list[str]]):
        self.path, self.counts, self.offsets, self.present = path, counts, offsets, present
        self.first, self.sizes, self.frames = first, sizes, frames

    def visible(self, video: str, anno_ids: list[str]) -> np.ndarray:
        """bool ``[T]`` over the video's frames: True where at least one of ``anno_ids`` has a mask."""
        num_frames = len(self.frames[video])
        visible = np.zeros(num_frames, dtype=bool)
        for anno_id in anno_ids:
            visible |= self.present[self.first[anno_id]:self.first[anno_id] + num_frames]
        return visible

    def union(self, video: str, exp_id: str, anno_ids: list[str], indices, size: tuple[int, int]) -> np.ndarray:
        """bool ``[T, H, W]``: for each video frame index in ``indices``, the union of the ``anno_ids`` masks
        (empty where none of them is present). ``size`` is the ``(H, W)`` of the frames; masks of another size,
        or an RLE that does not decode, raise a DatasetFormatError naming the file, video, expression and frame."""
        stored = self.sizes[video]
        if stored is not None and tuple(stored) != tuple(size):
            raise DatasetFormatError(f"{self.path}: video {video!r}, expression {exp_id!r}: its masks are "
                                     f"{stored[0]}x{stored[1]} (HxW) but the frames are {size[0]}x{size[1]}")
        indices = list(indices)
        masks = np.zeros((len(indices), *size), dtype=bool)
        for anno_id in anno_ids:
            start = self.first[anno_id]
            for t, index in enumerate(indices):
                if self.present[start + index]:
                    masks[t] |= self._decode(start + index, video, exp_id, anno_id, index)
        return masks

    def _decode(self, entry: int, video: str, exp_id: str, anno_id: str, index: int) -> np.ndarray:
        rle = {"size": list(self.sizes[video]),
               "counts": self.counts[self.offsets[entry]:self.offsets[entry + 1]].tobytes()}
        try:
            check_rle(rle)
        except ValueError as error:
            raise DatasetFormatError(f"{self.path}: video {video!r}, expression {exp_id!r}, anno_id {anno_id}, "
                                     f"frame {self.frames[video][index]!r}: {error}; re-download the file") from error
        return rle_to_mask(rle)


def read_mask_dict(path: Path) -> dict:
    """The parsed ``mask_dict.json``; DatasetFormatError naming it when it is not a json object."""
    try:
        with open(path, encoding="utf-8") as f:
            mask_dict = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"{path} is not valid json ({error}); re-download it") from error
    if not isinstance(mask_dict, dict):
        raise DatasetFormatError(f"{path}: expected a top-level object {{anno_id: [RLE or null per frame]}}")
    return mask_dict


def _rle_size(rle, where: str) -> tuple[int, int]:
    """The ``(H, W)`` of one json RLE entry after a structural check (its runs are checked when decoded)."""
    size = rle.get("size") if isinstance(rle, dict) else None
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) for s in size)
            and isinstance(rle.get("counts"), str)):
        raise DatasetFormatError(f"{where}: expected null or a COCO RLE {{'size': [H, W], 'counts': str}}, "
                                 f"got {str(rle)[:80]}")
    return size[0], size[1]


def load_mask_store(path: str | Path, annos: dict[str, dict[str, list[str]]], frames: dict[str, list[str]],
                    frame_sizes: dict[str, tuple[int, int]] | None = None) -> MaskStore:
    """Read ``mask_dict.json`` at ``path`` once and keep the anno ids that ``annos`` uses.

    Args:
        annos: video -> exp_id -> the expression's anno ids (strings).
        frames: video -> its frame names; every used anno id needs exactly one entry per frame.
        frame_sizes: video -> ``(H, W)`` of its frames, which every RLE of the video must have; without it,
            every RLE of a video must have the size of the video's first one.

    Raises FileNotFoundError, or DatasetFormatError naming the file, video, expression and frame: not json, an
    anno id that is not a key, a wrong number of entries, an entry that is neither null nor an RLE, an RLE of
    another size, an anno id used by two videos.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the MeViS masks of this split; re-download it")
    mask_dict = read_mask_dict(path)
    chunks, present, first, owner, sizes = [], [], {}, {}, {}
    for video in sorted(annos):
        names = frames[video]
        size = frame_sizes[video] if frame_sizes is not None else None
        for exp_id, anno_ids in annos[video].items():
            for anno_id in anno_ids:
                where = f"{path}: video {video!r}, expression {exp_id!r}, anno_id {anno_id}"
                if anno_id in owner:
                    if owner[anno_id] != video:
                        raise DatasetFormatError(f"{where}: this anno_id is also used by video {owner[anno_id]!r}; "
                                                 "an anno_id belongs to one video")
                    continue
                if anno_id not in mask_dict:
                    raise DatasetFormatError(f"{where}: not a key of the file (anno_id and mask_dict.json come "
                                             "from different downloads?)")
                entries = mask_dict[anno_id]
                if not isinstance(entries, list) or len(entries) != len(names):
                    count = len(entries) if isinstance(entries, list) else type(entries).__name__
                    raise DatasetFormatError(f"{where}: {count} entries, but the video has {len(names)} frames "
                                             "(one RLE or null per frame)")
                owner[anno_id], first[anno_id] = video, len(present)
                for name, rle in zip(names, entries):
                    if rle is not None:
                        rle_size = _rle_size(rle, f"{where}, frame {name!r}")
                        size = rle_size if size is None else size
                        if rle_size != tuple(size):
                            raise DatasetFormatError(f"{where}, frame {name!r}: RLE of size {rle_size[0]}x"
                                                     f"{rle_size[1]} (HxW), but the video's frames are "
                                                     f"{size[0]}x{size[1]}")
                        chunks.append(rle["counts"].encode("ascii", errors="replace"))
                    else:
                        chunks.append(b"")
                    present.append(rle is not None)
        sizes[video] = tuple(size) if size is not None else None
    del mask_dict  # the packed copy below is all that is kept
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(chunk) for chunk in chunks], dtype=np.int64)
    counts = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    return MaskStore(path, counts, offsets, np.array(present, dtype=bool), first, sizes, frames)
