"""J, F and db_statistics on masks small enough to count by hand."""
import numpy as np
import pytest

from metrics.jf import (boundary_f, boundary_map, db_statistics, disk, jaccard, pairwise_jf,
                             tolerance_px)


def band(rows: int, height: int = 6, width: int = 5) -> np.ndarray:
    """``[H, W]`` mask whose first ``rows`` rows are set (a straight horizontal boundary)."""
    mask = np.zeros((height, width), bool)
    mask[:rows] = True
    return mask


def band_with_tab() -> np.ndarray:
    """Rows 0-2 everywhere plus a 2x2 tab below them at rows 3-4, columns 0-1 (6x5 image)."""
    mask = band(3)
    mask[3:5, 0:2] = True
    return mask


def test_boundary_map_square_ring():
    # A 2x2 square: the boundary is the ring of the 3x3 block shifted half a pixel up-left.
    mask = np.zeros((5, 5), bool)
    mask[1:3, 1:3] = True
    expected = np.array([[1, 1, 1, 0, 0],
                         [1, 0, 1, 0, 0],
                         [1, 1, 1, 0, 0],
                         [0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(boundary_map(mask), expected)


def test_boundary_map_image_edges():
    # Right column set: last-column pixels compare only downwards, so only column 1 is a boundary.
    mask = np.zeros((3, 3), bool)
    mask[:, 2] = True
    np.testing.assert_array_equal(boundary_map(mask), np.array([[0, 1, 0]] * 3, bool))
    assert not boundary_map(np.ones((4, 4), bool)).any()  # a full mask has no boundary


def test_boundary_map_batched_equals_per_frame():
    rng = np.random.default_rng(0)
    masks = rng.random((2, 3, 7, 9)) > 0.5
    batched = boundary_map(masks)
    for index in np.ndindex(2, 3):
        np.testing.assert_array_equal(batched[index], boundary_map(masks[index]))


def test_disk_radius_2():
    expected = np.array([[0, 0, 1, 0, 0],
                         [0, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1],
                         [0, 1, 1, 1, 0],
                         [0, 0, 1, 0, 0]], np.uint8)
    np.testing.assert_array_equal(disk(2), expected)


def test_tolerance_px():
    assert tolerance_px(0.008, 480, 854) == 8  # ceil(7.84)
    assert tolerance_px(0.008, 6, 5) == 1  # ceil(0.062)
    assert tolerance_px(3, 480, 854) == 3
    with pytest.raises(ValueError, match="whole number"):
        tolerance_px(2.5, 480, 854)


def test_jaccard_with_void():
    gt, pred = band(3)[None], band_with_tab()[None]  # 15 and 19 pixels, 15 shared
    assert jaccard(pred, gt)[0] == pytest.approx(15 / 19)
    void = np.zeros_like(gt)
    void[0, 4, 0:2] = True  # hides 2 of the 4 extra predicted pixels
    assert jaccard(pred, gt, void)[0] == pytest.approx(15 / 17)


def test_jaccard_empty_union_is_one():
    empty = np.zeros((2, 4, 4), bool)
    full = np.ones((2, 4, 4), bool)
    np.testing.assert_array_equal(jaccard(empty, empty), [1.0, 1.0])
    np.testing.assert_array_equal(jaccard(full, full, void=full), [1.0, 1.0])  # everything void


def test_f_one_pixel_shift_within_tolerance_one():
    gt = band(3)[None]
    assert boundary_f(band(4)[None], gt, bound_th=1)[0] == 1.0  # boundary rows 2 and 3: 1 px apart
    assert boundary_f(band(5)[None], gt, bound_th=1)[0] == 0.0  # 2 px apart: P = R = 0 -> F = 0
    assert boundary_f(band(5)[None], gt, bound_th=2)[0] == 1.0


def test_f_partial_match_by_hand():
    # GT boundary: row 2 (5 px). Predicted boundary (7 px): (2,1) (2,2) (2,3) (2,4) (3,1) (4,0) (4,1).
    # Radius-1 disk: (4,0) and (4,1) are 2 rows from row 2 -> P = 5/7; every GT pixel is matched -> R = 1.
    f = boundary_f(band_with_tab()[None], band(3)[None], bound_th=1)[0]
    assert f == pytest.approx(2 * (5 / 7) / (5 / 7 + 1))  # 5/6


def test_f_void_removed_before_boundaries():
    # Voiding row 4 of the tab leaves a 1-row tab whose boundary (row 3) is within 1 px of row 2.
    void = np.zeros((1, 6, 5), bool)
    void[0, 4] = True
    assert boundary_f(band_with_tab()[None], band(3)[None], void, bound_th=1)[0] == 1.0


def test_f_edge_cases():
    empty, square = np.zeros((1, 8, 8), bool), np.zeros((1, 8, 8), bool)
    square[0, 2:5, 2:5] = True
    assert boundary_f(empty, empty)[0] == 1.0  # no boundaries at all: P = R = 1
    assert boundary_f(empty, square)[0] == 0.0  # nothing predicted: P = 1, R = 0
    assert boundary_f(square, empty)[0] == 0.0  # nothing to find: P = 0, R = 1
    # A full-image mask has no boundary, so against an empty GT both boundaries are empty: F = 1 (toolkit rule).
    assert boundary_f(np.ones((1, 8, 8), bool), empty)[0] == 1.0


def test_pairwise_matches_single_pair_calls():
    rng = np.random.default_rng(1)
    preds = rng.random((3, 4, 20, 24)) > 0.7
    gts = rng.random((2, 4, 20, 24)) > 0.6
    void = rng.random((4, 20, 24)) > 0.9
    j, f = pairwise_jf(preds, gts, void)
    assert j.shape == f.shape == (3, 2, 4)
    for k in range(3):
        for n in range(2):
            np.testing.assert_array_equal(j[k, n], jaccard(preds[k], gts[n], void))
            np.testing.assert_array_equal(f[k, n], boundary_f(preds[k], gts[n], void))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        jaccard(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5), bool))


def test_db_statistics_by_hand():
    # T = 8: bin edges round(linspace(1, 8, 5)) - 1 = [0, 2, 4, 5, 7]; first bin frames 0-2, last bin 5-7.
    values = np.array([1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.3, np.nan])
    mean, recall, decay = db_statistics(values)
    assert mean == pytest.approx(3.3 / 7)
    assert recall == pytest.approx(3 / 8)  # NaN counts as a frame not above 0.5
    assert decay == pytest.approx(0.8 - 0.15)


def test_db_statistics_short_sequence_bins():
    # T = 5: edges [0, 1, 2, 3, 4]; first bin frames 0-1, last bin frames 3-4.
    mean, recall, decay = db_statistics(np.array([1.0, 0.5, 0.2, 0.4, 0.0]))
    assert (mean, recall) == (pytest.approx(0.42), pytest.approx(0.2))
    assert decay == pytest.approx(0.75 - 0.2)
