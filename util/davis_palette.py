"""Indexed PNGs with the DAVIS palette: how DAVIS-2017 annotations and results are stored (pixel = object id)."""
import io

import numpy as np
from PIL import Image


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS / PASCAL VOC annotations (id 1 dark red, 2 dark green, ...), flat RGB.

    Colour of id ``i``: bit ``3k + c`` of ``i`` sets bit ``7 - k`` of channel ``c`` (R, G, B).
    """
    palette = []
    for index in range(256):
        channels = [0, 0, 0]
        value = index
        for bit in range(8):
            for channel in range(3):
                channels[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette += channels
    return palette


def palette_png_bytes(ids: np.ndarray) -> bytes:
    """``[H, W]`` object ids (0 background, at most 255) -> PNG bytes of a "P" image with the DAVIS palette."""
    if ids.ndim != 2 or ids.min(initial=0) < 0 or ids.max(initial=0) > 255:
        raise ValueError(f"expected [H, W] ids in 0..255, got shape {list(ids.shape)}, range "
                         f"{ids.min(initial=0)}..{ids.max(initial=0)}")
    height, width = ids.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(ids, dtype=np.uint8).tobytes())
    image.putpalette(davis_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
