"""Mask overlays for looking at predictions: a coloured, translucent mask and the sentence written on the frame.

Pure functions on uint8 RGB arrays ``[H, W, 3]``; the input frame is never modified.
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# One colour a sentence (RGB), cycled: distinct hues that stay visible on most footage.
MASK_COLORS = ((255, 56, 56), (56, 128, 255), (72, 220, 72), (255, 200, 32), (220, 72, 255), (32, 220, 220))
CAPTION_BAND_ALPHA = 0.6  # darkening behind the text, so that it reads on bright frames
MIN_FONT_SIZE = 8


def mask_color(index: int) -> tuple[int, int, int]:
    """The overlay colour of sentence ``index``."""
    return MASK_COLORS[index % len(MASK_COLORS)]


def overlay_mask(frame: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float = 0.5) -> np.ndarray:
    """``frame`` uint8 ``[H, W, 3]`` with ``color`` blended in at ``alpha`` where ``mask`` (bool ``[H, W]``) is set.

    A masked pixel becomes ``round((1 - alpha) * pixel + alpha * color)``; every other pixel is left as it was.
    """
    if mask.shape != frame.shape[:2]:
        raise ValueError(f"mask {list(mask.shape)} does not match frame {list(frame.shape[:2])} (H, W)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = frame.copy()
    blended = (1.0 - alpha) * frame[mask] + alpha * np.asarray(color, dtype=np.float64)  # [N, 3]
    out[mask] = np.rint(blended).astype(np.uint8)
    return out


def wrap_text(text: str, font: ImageFont.FreeTypeFont, max_width: float) -> list[str]:
    """``text`` broken into lines at spaces so that each fits ``max_width`` pixels (a word longer than that
    stays whole on its own line)."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if line and font.getlength(candidate) > max_width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line] if line else lines


def draw_caption(frame: np.ndarray, text: str, font_size: int | None = None) -> np.ndarray:
    """``frame`` uint8 ``[H, W, 3]`` with ``text`` in white on a darkened band along the top, wrapped to the width.

    font_size: pixels (default: 1/16 of the frame height, at least ``MIN_FONT_SIZE``). Only the band's rows
    change.
    """
    height, width = frame.shape[:2]
    font = ImageFont.load_default(size=font_size or max(MIN_FONT_SIZE, height // 16))
    margin = max(2, round(font.size) // 4)
    lines = wrap_text(text, font, width - 2 * margin)
    ascent, descent = font.getmetrics()
    line_height = ascent + descent
    band = min(height, 2 * margin + line_height * len(lines))
    out = frame.copy()
    # The text is drawn on the band alone, so nothing below it can change.
    image = Image.fromarray(np.rint(out[:band] * (1.0 - CAPTION_BAND_ALPHA)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((margin, margin + row * line_height), line, fill=(255, 255, 255), font=font)
    out[:band] = np.asarray(image)
    return out


def overlay_frame(frame: np.ndarray, mask: np.ndarray, sentence: str, color: tuple[int, int, int],
                  alpha: float = 0.5) -> np.ndarray:
    """The demo's overlay: ``overlay_mask`` then ``draw_caption`` with the sentence."""
    return draw_caption(overlay_mask(frame, mask, color, alpha), sentence)
