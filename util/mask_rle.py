"""Binary masks <-> COCO run-length encoding (pycocotools), JSON-ready."""
import numpy as np
from pycocotools import mask as coco_mask


def mask_to_rle(mask: np.ndarray) -> dict:
    """``[H, W]`` bool mask -> ``{"size": [H, W], "counts": str}`` (column-major RLE, as COCO stores it)."""
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle expects one [H, W] mask, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    """COCO RLE (``counts`` as str or bytes) -> ``[H, W]`` bool mask."""
    counts = rle["counts"]
    encoded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco_mask.decode(encoded).astype(bool)
