"""DAVIS-2017 unsupervised protocol: proposal matching, toolkit conventions and the folder reader."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrics.davis import evaluate_davis_unsupervised, match_video, summarize
from testing.davis_reference_loop import evaluate_loop, evaluate_video_loop

T, H, W = 4, 12, 16


def two_objects() -> np.ndarray:
    """``[T, H, W]`` labels: object 1 a box at the top left, object 2 a box at the bottom right."""
    labels = np.zeros((T, H, W), np.uint8)
    labels[:, 1:5, 1:6] = 1
    labels[:, 6:11, 8:15] = 2
    return labels


def test_swapped_ids_still_score_full():
    gt = two_objects()
    swapped = np.choose(gt, [0, 2, 1]).astype(np.uint8)
    j, f = match_video(gt, swapped)
    np.testing.assert_array_equal(j, np.ones((2, T)))
    np.testing.assert_array_equal(f, np.ones((2, T)))


def test_extra_proposals_are_ignored():
    gt = two_objects()
    res = gt.copy()
    res[:, 0, 10:16] = 3  # a spurious third proposal far from both objects
    j, f = match_video(gt, res)
    np.testing.assert_array_equal(j, np.ones((2, T)))
    np.testing.assert_array_equal(f, np.ones((2, T)))


def test_missing_object_scores_zero_where_visible_one_where_absent():
    gt = two_objects()
    gt[3][gt[3] == 2] = 0  # object 2 leaves in the last frame
    res = np.where(gt == 1, 1, 0).astype(np.uint8)  # no proposal for object 2
    j, f = match_video(gt, res)
    np.testing.assert_array_equal(j[0], np.ones(T))
    # Object 2 is matched to an empty padding proposal, as in the toolkit: 0 while visible, 1 once gone.
    np.testing.assert_array_equal(j[1], [0, 0, 0, 1])
    np.testing.assert_array_equal(f[1], [0, 0, 0, 1])


def test_partial_overlap_by_hand():
    gt = two_objects()
    res = np.where(gt == 1, 1, 0).astype(np.uint8)
    res[:, 1:5, 1:3] = 0  # keeps columns 3-5 of the 4x5 box: 12 of its 20 pixels
    j, _ = match_video(gt, res)
    np.testing.assert_allclose(j[0], np.full(T, 12 / 20))


def test_void_is_background_and_objects_come_from_the_first_frame():
    gt = two_objects()
    gt[:, 0, :] = 255  # void band
    gt[1:, 11, 0:4] = 3  # an object that appears after the first frame is not evaluated
    res = np.where(gt == 255, 0, gt).astype(np.uint8)
    res[res == 3] = 0
    j, f = match_video(gt, res)
    assert j.shape == (2, T)
    np.testing.assert_array_equal(j, np.ones((2, T)))
    np.testing.assert_array_equal(f, np.ones((2, T)))
    # The toolkit reads void as background: a prediction spilling onto it is penalised.
    res[:, 0, 1:6] = 1
    j, _ = match_video(gt, res)
    np.testing.assert_allclose(j[0], np.full(T, 20 / 25))


def test_more_than_20_proposals_is_an_error():
    res = np.zeros((T, H, W), np.uint8)
    res[0, 0, 0] = 21
    with pytest.raises(ValueError, match="at most 20 proposals"):
        match_video(two_objects(), res, "bike")


def test_agrees_with_frame_by_frame_toolkit_algorithm():
    rng = np.random.default_rng(0)
    videos = {}
    for name in ("a", "b"):
        gt = np.zeros((5, 40, 56), np.uint8)
        res = np.zeros_like(gt)
        for obj, proposal in zip((1, 2, 3), rng.permutation([1, 2, 4])):  # overlapping boxes, jittered copies
            y, x = rng.integers(5, 30), rng.integers(5, 40)
            gt[:, y:y + 10, x:x + 14] = obj
            res[:, y + rng.integers(-2, 3):y + 9, x:x + 12 + rng.integers(0, 4)] = proposal
        gt[:, 0, :] = 255
        videos[name] = (gt, res)
    scores = {}
    for name, (gt, res) in videos.items():
        j_rows, f_rows = match_video(gt, res, name)
        loop_j, loop_f = evaluate_video_loop(gt, res)
        np.testing.assert_array_equal(np.sort(j_rows.ravel()), np.sort(loop_j.ravel()))
        np.testing.assert_array_equal(np.sort(f_rows.ravel()), np.sort(loop_f.ravel()))
        scores.update({f"{name}_{i + 1}": rows for i, rows in enumerate(zip(j_rows, f_rows))})
    ours, loop = summarize(scores), evaluate_loop(videos)
    for key in ("J", "F", "JF", "J_recall", "J_decay", "F_recall", "F_decay"):
        assert ours[key] == pytest.approx(loop[key], abs=1e-12)


def write_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels, mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (37 * i) % 256)])  # 256 distinct colours
    image.save(path)


@pytest.fixture()
def davis_tree(tmp_path: Path) -> tuple[Path, Path]:
    """DAVIS root with two val videos (two objects each) and a results folder: perfect, then object 2 missing."""
    davis, results = tmp_path / "DAVIS", tmp_path / "results"
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("cat\ndog\n")
    (davis / "ImageSets" / "2017" / "train.txt").write_text("cow\n")
    gt = two_objects()
    for video in ("cat", "dog"):
        for t in range(T):
            write_png(davis / "Annotations_unsupervised" / "480p" / video / f"{t:05d}.png", gt[t])
            res = gt[t] if video == "cat" else np.where(gt[t] == 1, 1, 0).astype(np.uint8)
            write_png(results / video / f"{t:05d}.png", res)
    return davis, results


def test_evaluate_folder(davis_tree):
    davis, results = davis_tree
    out = evaluate_davis_unsupervised(davis, results, "val")
    # Objects: cat_1, cat_2, dog_1 perfect; dog_2 never predicted.
    assert out["J"] == pytest.approx(3 / 4) and out["F"] == pytest.approx(3 / 4)
    assert out["JF"] == pytest.approx(3 / 4)
    assert out["J_recall"] == pytest.approx(3 / 4) and out["F_recall"] == pytest.approx(3 / 4)
    assert out["J_decay"] == 0.0 and out["F_decay"] == 0.0
    assert out["per_object"] == {"cat_1": {"J": 1.0, "F": 1.0}, "cat_2": {"J": 1.0, "F": 1.0},
                                 "dog_1": {"J": 1.0, "F": 1.0}, "dog_2": {"J": 0.0, "F": 0.0}}


def test_missing_result_frame_is_named(davis_tree):
    davis, results = davis_tree
    (results / "dog" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"dog.*00002"):
        evaluate_davis_unsupervised(davis, results, "val")


def test_missing_result_video_and_split_are_named(davis_tree):
    davis, results = davis_tree
    with pytest.raises(FileNotFoundError, match="cow"):
        evaluate_davis_unsupervised(davis, results, "train")  # no annotations for cow
    with pytest.raises(FileNotFoundError, match="test-dev.txt"):
        evaluate_davis_unsupervised(davis, results, "test-dev")


def test_result_of_wrong_size_is_an_error(davis_tree):
    davis, results = davis_tree
    write_png(results / "cat" / "00001.png", np.zeros((H // 2, W // 2), np.uint8))
    with pytest.raises(ValueError, match="00001.png"):
        evaluate_davis_unsupervised(davis, results, "val")
