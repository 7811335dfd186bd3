"""util/mask_rle.py: run lengths of compressed COCO RLE strings, and the check that catches broken ones."""
import numpy as np
import pytest

from util.mask_rle import check_rle, mask_to_rle, rle_to_mask, run_lengths


def runs_of(mask: np.ndarray) -> list[int]:
    """Run lengths of a mask in column-major order, background first (COCO's convention), by hand."""
    flat = mask.T.ravel().astype(int)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0] + runs if flat[0] else runs


def test_run_lengths_of_a_hand_made_mask():
    mask = np.array([[0, 1], [1, 1]], bool)  # column-major: 0, 1, 1, 1
    assert run_lengths(mask_to_rle(mask)["counts"].encode()).tolist() == [1, 3]
    assert run_lengths(mask_to_rle(np.ones((2, 3), bool))["counts"].encode()).tolist() == [0, 6]


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (480, 854), (1000, 1000)])
@pytest.mark.parametrize("density", [0.0, 0.001, 0.5, 1.0])
def test_run_lengths_match_the_mask_and_cover_it(shape, density):
    """Long runs need several 5-bit groups, and runs shorter than the one two before are stored negative."""
    mask = np.random.default_rng(1).random(shape) < density
    rle = mask_to_rle(mask)
    assert run_lengths(rle["counts"].encode()).tolist() == runs_of(mask)
    check_rle(rle)
    np.testing.assert_array_equal(rle_to_mask(rle), mask)


def test_check_rle_names_what_is_broken():
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    good = mask_to_rle(mask)
    cases = {
        "cut short": ({**good, "counts": good["counts"][:-2]}, "cover"),
        "one run too many": ({**good, "counts": good["counts"] + "2"}, "cover"),
        "empty string": ({**good, "counts": ""}, "runs cover 0 pixels but its size 30x40 has 1200"),
        "ends inside a number": ({**good, "counts": good["counts"] + "o"}, "cut off"),
        "outside the alphabet": ({**good, "counts": "~~"}, "outside the RLE alphabet"),
        "other size": ({**good, "size": [40, 30 + 1]}, "cover"),
        "uncompressed": ({"size": [30, 40], "counts": [0, 1200]}, "frPyObjects"),
        "no size": ({"counts": good["counts"]}, "expected an RLE object"),
        "bad size": ({**good, "size": [30]}, "'size' must be"),
    }
    for name, (rle, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            check_rle(rle)
