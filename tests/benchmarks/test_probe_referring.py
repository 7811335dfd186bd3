"""The probe ladder (benchmarks/probe_referring.py) and its parts: pixel-derived labels against the generator's
truth, linear probes on planted and shuffled signals, mask pooling, and a tiny end-to-end run."""
import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from benchmarks.linear_probe import cosine_within_between, majority_accuracy, probe_accuracy
from benchmarks.probe_labels import OBJECT_ATTRIBUTES, object_labels, sentence_labels
from benchmarks.probe_referring import fill_missing, input_masks, load_predictor, main, masked_average, parse_args
from datasets.refshapes import generate_video, video_rng
from util.checkpoint import CHECKPOINT_KEYS, trainable_state_dict
from util.config import load_config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "refshapes_tiny.yaml"
STAGES = (["frames", "vae"] + [f"unet_f{i}" for i in range(6)] + [f"backbone_l{i}" for i in range(3)]
          + [f"memory_l{i}" for i in range(4)] + ["decoder_query"])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for this module: the tiny model gains nothing from a second one, and on a shared CPU a
    second thread stalls every parallel region (util/cpu_threads.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory, tiny_weights) -> Path:
    """The tiny config at 32 px (the 64-px RefShapes frames are resized, so masks go through the resize too)."""
    cfg = load_config(CONFIG)
    cfg["weights"] = str(tiny_weights)
    cfg["data"]["test_size"] = cfg["data"]["max_size"] = 32
    path = tmp_path_factory.mktemp("probe_config") / "tiny32.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_ladder(argv: list[str]) -> tuple[str, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(argv)
    text = out.getvalue()
    return text, json.loads(text.strip().splitlines()[-1])


def read_split_video(root: Path, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, S, S, 3] and object ids [T, S, S] of one RefShapes video as written on disk."""
    paths = sorted((root / split / "JPEGImages" / f"rs_{split}_{index:04d}").glob("*.jpg"))
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    ids = np.stack([np.asarray(Image.open(root / split / "Annotations" / p.parent.name / f"{p.stem}.png"))
                    for p in paths])
    return frames, ids


def test_pixel_labels_match_the_generator(refshapes_root):
    """The conftest data set: 8 train + 3 valid videos, 8 frames of 64 px, seed 0."""
    wrong, total = dict.fromkeys(OBJECT_ATTRIBUTES, 0), 0
    for split, count in (("train", 8), ("valid", 3)):
        for index in range(count):
            truth = generate_video(video_rng(0, split, index), 8, 64).objects
            labels = object_labels(*read_split_video(refshapes_root, split, index))
            assert sorted(labels) == [obj.obj_id for obj in truth]
            for obj in truth:
                total += 1
                for attribute in OBJECT_ATTRIBUTES:
                    wrong[attribute] += getattr(labels[obj.obj_id], attribute) != getattr(obj, attribute)
    assert total >= 30
    assert all(count <= 0.05 * total for count in wrong.values()), wrong


def test_sentence_labels_name_single_words():
    assert sentence_labels("the red circle moving up") == {"colour": "red", "shape": "circle", "motion": "up"}
    assert sentence_labels("the big shape that does not move") == {"colour": None, "shape": None, "motion": "still"}
    # two shapes named: no shape label; "left of" is a relation, not a motion
    assert sentence_labels("the circle left of the blue square") == {"colour": "blue", "shape": None, "motion": None}
    assert sentence_labels("the green diamond going to the left")["motion"] == "left"
    assert sentence_labels("the leftmost triangle")["motion"] is None


def test_probe_recovers_a_planted_signal_and_not_a_shuffled_one():
    generator = torch.Generator().manual_seed(0)
    classes = ["a", "b", "c", "d"]

    def sample(n: int) -> tuple[torch.Tensor, list[str]]:
        codes = torch.randint(0, 4, (n,), generator=generator)
        features = torch.randn(n, 16, generator=generator)
        features[:, 3] += 5.0 * (codes % 2)  # the class is written into two of 16 dimensions (Bayes accuracy 0.99)
        features[:, 7] += 5.0 * (codes // 2)
        return features, [classes[c] for c in codes.tolist()]

    fit_x, fit_y = sample(300)
    held_x, held_y = sample(300)
    assert probe_accuracy(fit_x, fit_y, held_x, held_y) > 0.9
    shuffled = [fit_y[i] for i in torch.randperm(len(fit_y), generator=generator).tolist()]
    assert abs(probe_accuracy(fit_x, shuffled, held_x, held_y) - 0.25) < 0.1
    assert probe_accuracy(fit_x, ["a"] * 300, held_x, held_y) == majority_accuracy(["a"], held_y)
    assert probe_accuracy(fit_x[:0], [], held_x, held_y) is None


def test_majority_and_cosine_by_hand():
    assert majority_accuracy(["x", "y", "y"], ["y", "x", "y", "z"]) == 0.5
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    within, between = cosine_within_between(features, ["a", "a", "b", "b"])
    # within: (1, 0)·(2, 0) -> 1 and (0, 3)·(1, 1) -> 1/sqrt(2); between: 0, 1/sqrt(2), 0, 1/sqrt(2)
    assert within == pytest.approx((1 + 2 ** -0.5) / 2)
    assert between == pytest.approx(2 ** -0.5 / 2)


def test_masked_average_is_the_area_weighted_mean():
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # [T, C, 2, 2]
    masks = torch.zeros(2, 4, 4)
    masks[0, 0, 0] = 1  # frame 0: a quarter of cell (0, 0)
    masks[1, 2:, 2:] = 1  # frame 1: all of cell (1, 1)
    expected = (0.25 * features[0, :, 0, 0] + 1.0 * features[1, :, 1, 1]) / 1.25
    torch.testing.assert_close(masked_average(features, masks), expected)


def test_input_masks_resize_then_pad():
    masks = torch.zeros(1, 4, 6, dtype=torch.bool)
    masks[0, :2, :2] = True  # nearest 4 x 6 -> 2 x 3 keeps source pixels (0, 0), (0, 2), (0, 4), (2, 0), ...
    on_input = input_masks(masks, (2, 3), (4, 4))
    assert on_input.shape == (1, 4, 4)
    assert on_input[0, 0, 0] == 1 and on_input[0].sum() == 1  # only (0, 0) is kept, the padding is zero


def test_ladder_json_on_a_tiny_run(refshapes_root, tiny_weights, small_config):
    argv = ["--weights", str(tiny_weights), "--data_root", str(refshapes_root), "--config", str(small_config),
            "--max_videos", "2", "--json"]
    text, result = run_ladder(argv)
    assert "decoder_query" in text and "chance" in text  # the readable tables come first
    assert result["videos"] == {"train": 2, "valid": 2}
    assert list(result["stages"]) == STAGES
    for row in [*result["stages"].values(), result["chance"]]:
        assert set(row) == set(OBJECT_ATTRIBUTES) and all(0 <= v <= 1 for v in row.values())
    assert set(result["sentences"]) == {"clip_text", "roberta", "content_query"}
    for row in result["sentences"].values():
        assert set(row) == {"colour", "shape", "motion", "cos_within", "cos_between"}
        assert all(v is None or -1 <= v <= 1 for v in row.values())
    end = result["end"]
    assert 0 <= end["selected_J"] <= end["best_slot_J"] <= 1
    # Scores that depend on the sentence: a text path cut anywhere gives every sentence of a clip the same scores.
    assert end["score_std_between_sentences"] > 0 and end["score_std_between_slots"] > 0
    assert end["random_object_J"] == pytest.approx(expected_random_object_j(refshapes_root, 2))


def expected_random_object_j(root: Path, num_videos: int) -> float:
    """The objects' masks are disjoint, so another object's J is 1 exactly on the frames where neither is visible."""
    meta = json.loads((root / "meta_expressions" / "valid" / "meta_expressions.json").read_text())["videos"]
    values = []
    for index, name in enumerate(sorted(meta)[:num_videos]):
        _, ids = read_split_video(root, "valid", index)
        present = {o: (ids == o).any(axis=(1, 2)) for o in np.unique(ids) if o != 0}  # [T] per object
        for expression in meta[name]["expressions"].values():
            target = present[int(expression["obj_id"])]
            values.append(np.mean([1.0 if o == int(expression["obj_id"]) else np.mean(~target & ~shown)
                                   for o, shown in present.items()]))
    return float(np.mean(values))


def test_checkpoint_and_seed_select_the_trainable_weights(tmp_path, refshapes_root, tiny_weights, small_config):
    base = ["--weights", str(tiny_weights), "--data_root", str(refshapes_root), "--config", str(small_config)]
    untrained = load_predictor(parse_args(base))
    other_seed = load_predictor(parse_args([*base, "--seed", "1"]))
    weights, other = trainable_state_dict(untrained.model), trainable_state_dict(other_seed.model)
    assert any(not torch.equal(weights[k], other[k]) for k in weights)
    old_config = copy.deepcopy(untrained.cfg)
    del old_config["inference"]["threshold"]  # as if written before the option existed
    checkpoint = dict.fromkeys(CHECKPOINT_KEYS)
    checkpoint.update(model=weights, config=old_config, epoch=1, step=1, data_position=0)
    torch.save(checkpoint, tmp_path / "last.pth")
    loaded = load_predictor(parse_args([*base, "--seed", "1", "--checkpoint", str(tmp_path / "last.pth")]))
    assert all(torch.equal(value, trainable_state_dict(loaded.model)[k]) for k, value in weights.items())
    assert loaded.threshold == untrained.threshold


def test_fill_missing_adds_only_absent_keys():
    cfg = {"a": 1, "model": {"x": 2}}
    added = fill_missing(cfg, {"a": 9, "model": {"x": 9, "y": {"z": 3}}, "b": [4]})
    assert cfg == {"a": 1, "model": {"x": 2, "y": {"z": 3}}, "b": [4]}
    assert added == ["model.y", "b"]
