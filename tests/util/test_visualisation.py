"""Mask overlays (util/visualisation.py): exactly the masked pixels change, by the documented blend; captions."""
import numpy as np
import pytest
from PIL import ImageFont

from util.visualisation import MASK_COLORS, draw_caption, mask_color, overlay_frame, overlay_mask, wrap_text


def test_overlay_changes_exactly_the_masked_pixels_by_the_blend():
    frame = np.zeros((3, 4, 3), dtype=np.uint8)
    frame[..., 0] = 100  # every pixel (100, 0, 0)
    frame[2, 3] = (0, 0, 0)
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 1] = mask[1, 1] = mask[2, 3] = True
    out = overlay_mask(frame, mask, color=(0, 200, 51), alpha=0.5)
    # (1 - 0.5) * pixel + 0.5 * colour, rounded half to even as np.rint does: 25.5 -> 26, 25.5 -> 26.
    np.testing.assert_array_equal(out[0, 1], (50, 100, 26))
    np.testing.assert_array_equal(out[1, 1], (50, 100, 26))
    np.testing.assert_array_equal(out[2, 3], (0, 100, 26))
    changed = (out != frame).any(axis=-1)
    np.testing.assert_array_equal(changed, mask)
    assert frame[0, 1, 0] == 100  # the input is not modified


def test_overlay_alpha_bounds_and_shape_checks():
    frame = np.full((2, 2, 3), 10, dtype=np.uint8)
    everywhere = np.ones((2, 2), dtype=bool)
    np.testing.assert_array_equal(overlay_mask(frame, everywhere, (1, 2, 3), alpha=0.0), frame)
    np.testing.assert_array_equal(overlay_mask(frame, everywhere, (1, 2, 3), alpha=1.0),
                                  np.broadcast_to([1, 2, 3], (2, 2, 3)))
    np.testing.assert_array_equal(overlay_mask(frame, ~everywhere, (255, 255, 255)), frame)
    with pytest.raises(ValueError, match="does not match frame"):
        overlay_mask(frame, np.ones((2, 3), dtype=bool), (0, 0, 0))
    with pytest.raises(ValueError, match="alpha"):
        overlay_mask(frame, everywhere, (0, 0, 0), alpha=1.5)


def test_mask_colors_cycle():
    assert mask_color(0) == MASK_COLORS[0]
    assert mask_color(len(MASK_COLORS) + 2) == MASK_COLORS[2]
    assert len(set(MASK_COLORS)) == len(MASK_COLORS)


def test_wrap_text_fits_the_width_and_keeps_every_word():
    font = ImageFont.load_default(size=10)
    text = "the small dog running to the left of the red car"
    lines = wrap_text(text, font, 60)
    assert len(lines) > 1
    assert " ".join(lines) == text
    assert all(font.getlength(line) <= 60 or " " not in line for line in lines)
    assert wrap_text("supercalifragilistic", font, 5) == ["supercalifragilistic"]  # a long word stays whole


def test_caption_changes_only_a_band_at_the_top():
    frame = np.full((120, 160, 3), 200, dtype=np.uint8)
    out = draw_caption(frame, "the red circle moving up")
    changed_rows = np.flatnonzero((out != frame).any(axis=(1, 2)))
    band = changed_rows.max() + 1
    np.testing.assert_array_equal(changed_rows, np.arange(band))  # a contiguous band from row 0
    assert band < 40  # one line at 1/16 of the height, not the whole frame
    np.testing.assert_array_equal(out[band:], frame[band:])
    # The band is darkened (200 * 0.4 = 80) and white text is drawn on it.
    assert (out[:band] == 80).all(axis=-1).mean() > 0.5
    assert (out[:band] > 200).all(axis=-1).any()
    longer = draw_caption(frame, "the red circle moving up " * 6)  # wraps onto more lines: a taller band
    assert (longer != frame).any(axis=(1, 2)).sum() > band


def test_overlay_frame_is_mask_then_caption():
    frame = np.full((64, 64, 3), 50, dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=bool)
    mask[40:60, 10:30] = True
    out = overlay_frame(frame, mask, "a box", (255, 0, 0))
    np.testing.assert_array_equal(out, draw_caption(overlay_mask(frame, mask, (255, 0, 0)), "a box"))
    np.testing.assert_array_equal(out[40:60, 10:30], np.broadcast_to([152, 25, 25], (20, 20, 3)))
