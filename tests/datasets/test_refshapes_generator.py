"""RefShapes generator: Ref-YouTube-VOS layout, determinism, expression semantics and difficulty."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datasets.refshapes as refshapes
from datasets.refshapes import (
    KINDS,
    MOTIONS,
    SHAPES,
    SceneObject,
    candidate_expressions,
    generate_refshapes,
    generate_video,
    shape_area,
    shape_masks,
    video_rng,
)
from scripts import make_refshapes

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(num_videos=6, num_valid_videos=3, num_frames=6, size=64)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small") / "refshapes"
    generate_refshapes(root, seed=0, **SMALL)
    return root


@pytest.fixture(scope="module")
def larger_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("larger") / "refshapes"
    generate_refshapes(root, num_videos=40, num_valid_videos=0, num_frames=4, size=64, seed=0)
    return root


def load_meta(root: Path, split: str) -> dict:
    return json.loads((root / "meta_expressions" / split / "meta_expressions.json").read_text())["videos"]


def load_labels(root: Path, split: str, video: str, frames: list[str]) -> np.ndarray:
    """[T, H, W] uint8 object ids."""
    return np.stack([np.array(Image.open(root / split / "Annotations" / video / f"{f}.png")) for f in frames])


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_json_schema(small_root):
    assert sorted(p.name for p in small_root.iterdir()) == ["meta_expressions", "train", "valid"]
    names = {}
    for split, count in (("train", 6), ("valid", 3)):
        videos = load_meta(small_root, split)
        names[split] = set(videos)
        assert len(videos) == count
        for video, entry in videos.items():
            assert video.startswith(f"rs_{split}_")
            assert entry["frames"] == ["00000", "00005", "00010", "00015", "00020", "00025"]
            exp_ids = list(entry["expressions"])
            assert exp_ids == [str(i) for i in range(len(exp_ids))] and exp_ids
            for expression in entry["expressions"].values():
                assert set(expression) == {"exp", "obj_id", "kind"}
                assert expression["exp"] == " ".join(expression["exp"].lower().split())
                assert expression["exp"].startswith("the ")
                assert int(expression["obj_id"]) >= 1 and expression["kind"] in KINDS
            for folder, suffix, mode in (("JPEGImages", ".jpg", "RGB"), ("Annotations", ".png", "P")):
                files = sorted((small_root / split / folder / video).iterdir())
                assert [f.stem for f in files] == entry["frames"]
                assert {f.suffix for f in files} == {suffix}
                image = Image.open(files[0])
                assert (image.mode, image.size) == (mode, (64, 64))
    assert not names["train"] & names["valid"]
    palette = Image.open(next((small_root / "train" / "Annotations").rglob("*.png"))).getpalette()
    assert palette[:15] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]  # DAVIS ids 0..4
    assert not (small_root / "valid" / "meta.json").exists()


def test_train_meta_json_lists_objects_and_their_visible_frames(small_root):
    objects_of = json.loads((small_root / "train" / "meta.json").read_text())["videos"]
    expressions_of = load_meta(small_root, "train")
    assert set(objects_of) == set(expressions_of)
    for video, entry in objects_of.items():
        frames = expressions_of[video]["frames"]
        labels = load_labels(small_root, "train", video, frames)
        assert list(entry["objects"]) == [str(i) for i in range(1, len(entry["objects"]) + 1)]
        for obj_id, obj in entry["objects"].items():
            assert obj["category"] in SHAPES
            assert obj["frames"] == [f for f, lab in zip(frames, labels) if (lab == int(obj_id)).any()]


def test_annotation_ids_are_the_referred_objects(small_root):
    """Pixel ids in every PNG are object ids of the video, and every object is referred to at least once."""
    for split in ("train", "valid"):
        for video, entry in load_meta(small_root, split).items():
            referred = {int(e["obj_id"]) for e in entry["expressions"].values()}
            labels = load_labels(small_root, split, video, entry["frames"])
            present = set(np.unique(labels).tolist()) - {0}
            assert present == referred, (split, video)
            assert referred == set(range(1, len(referred) + 1))


def test_same_seed_gives_identical_bytes_and_other_seed_differs(small_root, tmp_path):
    generate_refshapes(tmp_path / "again", seed=0, **SMALL)
    generate_refshapes(tmp_path / "other", seed=1, **SMALL)
    reference = all_bytes(small_root)
    assert len(reference) == 3 + 2 * (6 + 3) * 6
    assert all_bytes(tmp_path / "again") == reference
    other = all_bytes(tmp_path / "other")
    assert other.keys() == reference.keys()
    differing = [k for k in reference if other[k] != reference[k]]
    assert "meta_expressions/train/meta_expressions.json" in differing
    assert sum(k.endswith(".jpg") for k in differing) == (6 + 3) * 6  # every JPEG differs


def test_videos_are_independent_of_the_dataset_size(tmp_path):
    """Video i depends only on (seed, split, i): a smaller dataset is a prefix of a larger one."""
    generate_refshapes(tmp_path / "two", num_videos=2, num_valid_videos=1, num_frames=3, size=32, seed=5)
    generate_refshapes(tmp_path / "four", num_videos=4, num_valid_videos=1, num_frames=3, size=32, seed=5)
    two, four = all_bytes(tmp_path / "two"), all_bytes(tmp_path / "four")
    images = [k for k in two if k.endswith((".jpg", ".png"))]
    assert images and all(two[k] == four[k] for k in images)
    assert load_meta(tmp_path / "two", "train").items() <= load_meta(tmp_path / "four", "train").items()


def test_kind_fractions(larger_root):
    kinds = [e["kind"] for v in load_meta(larger_root, "train").values() for e in v["expressions"].values()]
    fractions = {kind: kinds.count(kind) / len(kinds) for kind in KINDS}
    assert fractions["motion"] >= 0.25, fractions
    assert all(fractions[kind] >= 0.05 for kind in KINDS), fractions


def test_random_object_guess_scores_below_045(larger_root):
    """Mean over expressions of the expected J of a uniformly random object of the video."""
    scores = []
    for video, entry in load_meta(larger_root, "train").items():
        labels = load_labels(larger_root, "train", video, entry["frames"])
        objects = json.loads((larger_root / "train" / "meta.json").read_text())["videos"][video]["objects"]
        for expression in entry["expressions"].values():
            target = labels == int(expression["obj_id"])
            per_guess = []
            for obj_id in objects:
                guess = labels == int(obj_id)
                inter = (guess & target).sum(axis=(1, 2))
                union = (guess | target).sum(axis=(1, 2))
                per_guess.append(np.where(union == 0, 1.0, inter / np.maximum(union, 1)).mean())
            scores.append(np.mean(per_guess))
    assert 0.1 < np.mean(scores) < 0.45


def test_motion_expressions_need_motion_and_say_the_true_direction():
    """The target of every motion expression has a twin (same colour, shape, size) that moves differently,
    and the sentence names the target's actual direction of travel."""
    words = {"up": "up", "down": "down", "left": "left", "right": "right", "still": ("still", "not move")}
    motion_count = 0
    for index in range(40):
        video = generate_video(video_rng(0, "train", index), num_frames=4, size=64)
        for sentence, obj_id, kind in video.expressions:
            if kind != "motion":
                continue
            motion_count += 1
            target = video.objects[obj_id - 1]
            twins = [o for o in video.objects if o is not target
                     and (o.colour, o.shape, o.size) == (target.colour, target.shape, target.size)]
            assert twins and all(t.motion != target.motion for t in twins), sentence
            travel = target.centres[-1] - target.centres[0]
            assert np.allclose(np.sign(travel), MOTIONS[target.motion]), target
            expected = words[target.motion]
            assert any(w in sentence for w in (expected if isinstance(expected, tuple) else (expected,)))
    assert motion_count > 20


def scene_object(obj_id, colour, shape, motion, start, end, size="big", num_frames=4) -> SceneObject:
    centres = np.linspace(start, end, num_frames)
    return SceneObject(obj_id, shape, colour, size, motion, 10.0, centres)


def test_candidates_on_a_hand_built_scene():
    """Two identical red circles (left one rises, right one falls) and a blue square between them."""
    left = scene_object(1, "red", "circle", "up", (20, 80), (20, 40))
    right = scene_object(2, "red", "circle", "down", (108, 40), (108, 80))
    square = scene_object(3, "blue", "square", "still", (64, 64), (64, 64), size="small")
    objects = [left, right, square]
    rng = np.random.default_rng(0)
    for_left = candidate_expressions(rng, objects, left, size=128)
    assert for_left["appearance"] == [] and for_left["size"] == []
    assert for_left["motion"] and all("up" in s for s in for_left["motion"])
    assert for_left["position"] and all("left" in s for s in for_left["position"])  # "top" flips mid-clip
    assert for_left["relation"] and all("left of" in s for s in for_left["relation"])  # of the square
    for_square = candidate_expressions(rng, objects, square, size=128)
    appearance = set(for_square["appearance"])
    assert len(appearance) == 3 and {"the blue square", "the square"} < appearance
    assert (appearance - {"the blue square", "the square"}) <= {"the blue object", "the blue shape"}
    assert for_square["motion"] == []  # no twin: motion is not what identifies it
    assert len(for_square["size"]) == 1 and for_square["size"][0].split()[1] in ("small", "little")


def test_shape_masks_have_the_nominal_area():
    centres = np.array([[128.3, 127.6]])
    for shape in SHAPES:
        area = shape_masks(shape, 40.0, centres, 256).sum()
        assert area == pytest.approx(shape_area(shape, 40.0), rel=0.02), shape
        assert area == pytest.approx(shape_area("circle", 40.0), rel=0.1), shape


def test_bad_arguments_and_non_empty_output_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        generate_refshapes(tmp_path / "a", num_frames=1)
    with pytest.raises(ValueError, match="size"):
        generate_refshapes(tmp_path / "a", size=16)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="full"):
        generate_refshapes(tmp_path / "full", num_videos=1, num_valid_videos=0, num_frames=2, size=32)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert not (tmp_path / "a").exists()


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    written = []

    def write_then_fail(split_dir, name, video):
        if written:
            raise OSError("disk full")
        written.append(name)
        real_write_video(split_dir, name, video)

    real_write_video = refshapes.write_video
    monkeypatch.setattr(refshapes, "write_video", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        generate_refshapes(tmp_path / "out", num_videos=3, num_valid_videos=0, num_frames=2, size=32)
    assert written and list(tmp_path.iterdir()) == []


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.make_refshapes", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_help_and_small_run_as_a_subprocess(tmp_path):
    help_text = run_cli("--help").stdout
    for flag in ("--out", "--videos", "--valid_videos", "--frames", "--size", "--seed"):
        assert flag in help_text
    done = run_cli("--out", str(tmp_path / "cli"), "--videos", "2", "--valid_videos", "1", "--frames", "3",
                   "--size", "32", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert "2 train + 1 valid videos" in done.stdout
    assert sorted(load_meta(tmp_path / "cli", "train")) == ["rs_train_0000", "rs_train_0001"]
    assert load_meta(tmp_path / "cli", "valid")["rs_valid_0000"]["frames"] == ["00000", "00005", "00010"]


@pytest.mark.parametrize("bad, message", [
    (("--frames", "0"), "argument --frames: must be in [2, 20000], got 0"),
    (("--size", "31"), "argument --size: must be >= 32, got 31"),
    (("--videos", "x"), "argument --videos: expected an integer, got 'x'"),
    (("--seed", "-1"), "argument --seed: must be >= 0, got -1"),
])
def test_cli_refuses_bad_arguments(tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit) as exited:
        make_refshapes.main(["--out", str(tmp_path / "bad"), *bad])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not an empty folder"):
        make_refshapes.main(["--out", str(tmp_path / "full"), "--videos", "1", "--size", "32"])
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
