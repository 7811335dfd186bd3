"""metrics/mevis.py: hand-computed J and F (empty/empty, one side empty, a union of two objects), a missing video,
the release tag, bad predictions, and agreement with a loop of the official eval_mevis.py on irregular masks."""
import numpy as np
import pytest

from metrics.mevis import score_mevis
from testing.mevis_reference_loop import evaluate_mevis_loop
from testing.mevis_tree import object_masks, perturbed, scattered_masks, write_predictions, write_split

H, W = 40, 60  # tolerance ceil(0.008 * 72.1) = 1 px


def square(top: int, left: int, side: int, frames: int = 3) -> np.ndarray:
    masks = np.zeros((frames, H, W), bool)
    masks[:, top:top + side, left:left + side] = True
    return masks


@pytest.fixture()
def hand_tree(tmp_path):
    """Video "v", 3 frames: object 1 a 4x4 square on frames 1-2 only, object 2 a 6x6 square far from it."""
    small, big = square(5, 5, 4), square(20, 40, 6)
    small[0] = False
    videos = {"v": {"objects": {1: small, 2: big},
                    "expressions": {"0": ("the small one", [1]), "1": ("both", [1, 2]), "2": ("nothing", [])}}}
    return write_split(tmp_path / "gt", "valid_u", videos, frames=False), small, big


def test_hand_computed_cases(hand_tree, tmp_path):
    root, small, big = hand_tree
    pred = tmp_path / "pred"
    # "0": frame 0 both empty (J = F = 1), frame 1 prediction empty (0, 0), frame 2 exact (1, 1).
    write_predictions(pred, "v", "0", np.stack([small[0], np.zeros((H, W), bool), small[2]]))
    # "1": only the small square of the union. Its boundary map has 2h + 2w = 16 pixels, the big one's 24, so
    # P = 1, R = 16 / 40 on frames 1-2 (J = 16 / 52); frame 0 shows only the big square, predicted empty: 0, 0.
    write_predictions(pred, "v", "1", small)
    # "2": no object at all; a prediction there scores J = 0 and F = 0 (P = 0, R = 1) on its frame, 1 elsewhere.
    write_predictions(pred, "v", "2", np.stack([small[2], np.zeros((H, W), bool), np.zeros((H, W), bool)]))
    scores = score_mevis(pred, root, "valid_u")
    recall = 16 / 40
    f_union = 2 * recall / (1 + recall)
    expected = {"v/0": (2 / 3, 2 / 3), "v/1": (2 / 3 * 16 / 52, 2 / 3 * f_union), "v/2": (2 / 3, 2 / 3)}
    for name, (j, f) in expected.items():
        assert scores["per_expression"][name]["J"] == pytest.approx(j, abs=1e-12), name
        assert scores["per_expression"][name]["F"] == pytest.approx(f, abs=1e-12), name
    assert scores["J"] == pytest.approx(np.mean([j for j, _ in expected.values()]), abs=1e-12)
    assert scores["F"] == pytest.approx(np.mean([f for _, f in expected.values()]), abs=1e-12)
    assert scores["JF"] == pytest.approx((scores["J"] + scores["F"]) / 2)
    assert scores["expressions"] == 3 and scores["version"] == "unknown" and scores["missing_videos"] == []


def test_a_missing_video_scores_zero_with_a_warning(hand_tree, tmp_path):
    root, small, big = hand_tree
    write_split(root, "valid_u", {"v": {"objects": {1: small}, "expressions": {"0": ("a", [1])}},
                                  "w": {"objects": {2: big}, "expressions": {"0": ("b", [2]), "1": ("c", [2])}}},
                frames=False)
    pred = tmp_path / "pred"
    write_predictions(pred, "v", "0", small)
    with pytest.warns(UserWarning, match=r"pred/w not found: its 2 expressions score J = F = 0"):
        scores = score_mevis(pred, root, "valid_u")
    assert scores["per_expression"]["w/0"] == scores["per_expression"]["w/1"] == {"J": 0.0, "F": 0.0}
    assert scores["J"] == pytest.approx(1 / 3) and scores["F"] == pytest.approx(1 / 3)
    assert scores["missing_videos"] == ["w"]


def test_release_is_told_by_the_number_of_expressions(tmp_path):
    masks = square(5, 5, 4, frames=1)
    videos = {f"v{i}": {"objects": {i: masks}, "expressions": {str(e): ("x", [i]) for e in range(13)}}
              for i in range(61)}  # 61 x 13 = 793, MeViS v1 valid_u
    write_split(tmp_path / "gt", "valid_u", videos, frames=False)
    with pytest.warns(UserWarning, match="not found"):
        assert score_mevis(tmp_path / "empty", tmp_path / "gt", "valid_u")["version"] == "v1"


def test_bad_predictions_are_named(hand_tree, tmp_path):
    root, small, _ = hand_tree
    pred = tmp_path / "pred"
    write_predictions(pred, "v", "0", small)
    with pytest.raises(FileNotFoundError, match=r"video 'v', expression '1', frame '00000'"):
        score_mevis(pred, root, "valid_u")
    write_predictions(pred, "v", "1", np.zeros((3, H, W + 2), bool))
    write_predictions(pred, "v", "2", small)
    with pytest.raises(ValueError, match=r"v/1 are 62x40 \(WxH\), the ground truth is 60x40"):
        score_mevis(pred, root, "valid_u")
    with pytest.raises(FileNotFoundError, match="mask_dict.json not found"):
        score_mevis(pred, write_split(tmp_path / "server", "valid_u", {"v": {"objects": {1: small},
                                      "expressions": {"0": ("a", [1])}}}, frames=False, masks=False), "valid_u")


def test_equals_a_loop_of_the_official_algorithm_on_irregular_masks(tmp_path):
    """Irregular objects that move and leave the frame, and noise blobs with many parts and holes over the whole
    frame, at three frame sizes (tolerances 1, 2 and 4 px), with empty frames, expressions of one to three objects,
    perturbed predictions and one missing video."""
    rng = np.random.default_rng(0)
    videos, predictions = {}, {}
    anno_id = 0
    for index, (height, width) in enumerate([(37, 53), (120, 200), (240, 427)]):
        objects = {}
        for make, coverage in ((object_masks, 0.02), (object_masks, 0.1), (scattered_masks, 0.3)):
            objects[anno_id] = make(rng, 6, height, width, coverage, empty_frames=int(rng.integers(0, 3)))
            anno_id += 1
        ids = list(objects)
        expressions = {"0": ("one", ids[:1]), "1": ("two", ids[1:]), "2": ("all", ids), "3": ("again one", ids[2:])}
        videos[f"video{index}"] = {"objects": objects, "expressions": expressions}
        for exp_id, (_, anno_ids) in expressions.items():
            union = np.logical_or.reduce([objects[a] for a in anno_ids])
            predictions[(f"video{index}", exp_id)] = perturbed(rng, union)
    videos["unpredicted"] = {"objects": {99: object_masks(rng, 6, 37, 53, 0.1)}, "expressions": {"0": ("x", [99])}}
    root = write_split(tmp_path / "gt", "valid_u", videos, frames=False)
    pred = tmp_path / "pred"
    for (video, exp_id), masks in predictions.items():
        write_predictions(pred, video, exp_id, masks)

    with pytest.warns(UserWarning, match="unpredicted not found"):
        ours = score_mevis(pred, root, "valid_u")
    reference = evaluate_mevis_loop(root / "valid_u" / "meta_expressions.json", root / "valid_u" / "mask_dict.json",
                                    pred)
    assert set(ours["per_expression"]) == set(reference["per_expression"])
    for name, (j, f) in reference["per_expression"].items():
        assert ours["per_expression"][name]["J"] == pytest.approx(j, abs=1e-9), name
        assert ours["per_expression"][name]["F"] == pytest.approx(f, abs=1e-9), name
    for key in ("J", "F", "JF"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-9), key
    # Not a degenerate case: scores spread between 0 and 1.
    values = [j for j, _ in reference["per_expression"].values()]
    assert min(values) == 0.0 and 0.2 < float(np.median(values)) < 0.99
