"""Binary masks <-> COCO run-length encoding (pycocotools), JSON-ready."""
import numpy as np
from pycocotools import mask as coco_mask

# A compressed COCO RLE writes each run length in 5-bit groups, one character (48 + group) each, least
# significant group first; 0x20 marks "more groups follow", 0x10 in the last group is the sign. From the third
# run on, the stored value is the difference to the run two places before (pycocotools maskApi.c rleFrString).
_CHAR_OFFSET, _MORE, _SIGN, _BITS = 48, 0x20, 0x10, 0x1F
_MAX_GROUPS = 7  # 35 bits: more than any run length of a 32-bit count needs


def mask_to_rle(mask: np.ndarray) -> dict:
    """``[H, W]`` bool mask -> ``{"size": [H, W], "counts": str}`` (column-major RLE, as COCO stores it)."""
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle expects one [H, W] mask, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def run_lengths(counts: bytes) -> np.ndarray:
    """The run lengths ``[R]`` int64 of a compressed COCO RLE string (background first); ValueError when
    ``counts`` is not a well-formed compressed RLE (a character out of range, a cut-off number, a negative run)."""
    codes = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - _CHAR_OFFSET  # [C]
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    if codes.min() < 0 or codes.max() > 63:
        raise ValueError("counts holds characters outside the RLE alphabet ('0'..'o')")
    last = (codes & _MORE) == 0  # [C] the last group of a number
    if not last[-1]:
        raise ValueError("counts ends inside a number (it was cut off)")
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))  # [R] first group of each number
    group = np.arange(codes.size) - np.repeat(starts, np.diff(np.append(starts, codes.size)))  # [C] position
    if group.max() >= _MAX_GROUPS:
        raise ValueError("counts holds a run length too long for a 32-bit count")
    values = np.add.reduceat((codes & _BITS) << (5 * group), starts)  # [R]
    width = 5 * (group[last] + 1)  # bits of each number
    negative = (codes[last] & _SIGN) != 0
    values = np.where(negative, values - (np.int64(1) << width), values)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # runs 3, 5, ... add the run two before; run 1 is stored whole
    runs[2::2] = np.cumsum(values[2::2])  # runs 4, 6, ... likewise; runs 0 and 2 are stored whole
    if runs.min() < 0:
        raise ValueError("counts decodes to a negative run length")
    return runs


def check_rle(rle: dict) -> None:
    """ValueError saying what is wrong unless ``rle`` is a compressed COCO RLE whose runs cover its ``size``.

    pycocotools decodes a string whose runs fall short of H x W without complaint, leaving the remaining pixels
    uninitialised, so this check comes first.
    """
    if not isinstance(rle, dict) or not {"size", "counts"} <= set(rle):
        raise ValueError(f"expected an RLE object {{'size': [H, W], 'counts': str}}, got {str(rle)[:80]}")
    size, counts = rle["size"], rle["counts"]
    if not (isinstance(size, list | tuple) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in size)):
        raise ValueError(f"RLE 'size' must be [H, W] with non-negative integers, got {size!r}")
    if isinstance(counts, str):
        counts = counts.encode("ascii", errors="replace")
    if not isinstance(counts, bytes):
        raise ValueError(f"RLE 'counts' must be a compressed string, got {type(counts).__name__} (an uncompressed "
                         "RLE: convert it with pycocotools.mask.frPyObjects)")
    total = int(run_lengths(counts).sum())
    if total != size[0] * size[1]:
        raise ValueError(f"RLE runs cover {total} pixels but its size {size[0]}x{size[1]} has {size[0] * size[1]}")


def rle_to_mask(rle: dict) -> np.ndarray:
    """COCO RLE (``counts`` as str or bytes) -> ``[H, W]`` bool mask."""
    counts = rle["counts"]
    encoded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco_mask.decode(encoded).astype(bool)
