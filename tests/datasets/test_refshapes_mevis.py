"""RefShapes in the MeViS layout: the same videos as the default layout, union ground truth in mask_dict.json,
multi-object expressions that name exactly their objects, and a default layout left as it was."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.refshapes import GROUP_KINDS, KINDS, SceneObject, generate_refshapes, group_candidates
from util.mask_rle import rle_to_mask

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(num_videos=5, num_valid_videos=3, num_frames=5, size=64, seed=2)


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("layouts")
    generate_refshapes(root / "ytvos", **SMALL)
    generate_refshapes(root / "mevis", layout="mevis", **SMALL)
    return root / "ytvos", root / "mevis"


def meta(path: Path) -> dict:
    return json.loads(path.read_text())["videos"]


def labels(root: Path, split: str, video: str, frames: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(root / split / "Annotations" / video / f"{f}.png")) for f in frames])


def test_same_videos_and_the_union_of_the_objects_as_ground_truth(both_layouts):
    ytvos, mevis = both_layouts
    assert sorted(p.name for p in mevis.iterdir()) == ["train", "valid", "valid_u"]
    assert sorted(p.name for p in (mevis / "valid").iterdir()) == ["JPEGImages", "meta_expressions.json"]
    group_count = 0
    for source, target in (("train", "train"), ("valid", "valid_u")):
        single = meta(ytvos / "meta_expressions" / source / "meta_expressions.json")
        videos = meta(mevis / target / "meta_expressions.json")
        mask_dict = json.loads((mevis / target / "mask_dict.json").read_text())
        assert sorted(videos) == sorted(single)
        for video, entry in videos.items():
            jpegs = sorted((ytvos / source / "JPEGImages" / video).iterdir())
            assert [p.read_bytes() for p in jpegs] == [
                (mevis / target / "JPEGImages" / video / p.name).read_bytes() for p in jpegs]
            ids = labels(ytvos, source, video, entry["frames"])
            expressions = list(entry["expressions"].values())
            firsts = [(e["exp"], [int(single[video]["expressions"][k]["obj_id"])], e["kind"])
                      for k, e in zip(single[video]["expressions"], expressions)]
            assert [(e["exp"], e["obj_id"], e["kind"]) for e in expressions[:len(firsts)]] == firsts
            for expression in expressions:
                union = np.zeros(ids.shape, bool)
                for t in range(len(entry["frames"])):
                    for anno_id in expression["anno_id"]:
                        rle = mask_dict[str(anno_id)][t]
                        if rle is not None:
                            union[t] |= rle_to_mask(rle)
                np.testing.assert_array_equal(union, np.isin(ids, expression["obj_id"]))
            for expression in expressions[len(firsts):]:
                assert expression["kind"] in GROUP_KINDS and len(expression["obj_id"]) >= 2
                group_count += 1
            assert all(e["kind"] in KINDS for e in expressions[:len(firsts)])
    assert group_count > 0
    server = meta(mevis / "valid" / "meta_expressions.json")
    valid_u = meta(mevis / "valid_u" / "meta_expressions.json")
    assert {v: [e["exp"] for e in x["expressions"].values()] for v, x in server.items()} == \
           {v: [e["exp"] for e in x["expressions"].values()] for v, x in valid_u.items()}
    assert all(set(e) == {"exp"} for x in server.values() for e in x["expressions"].values())


def test_null_where_an_object_is_not_visible(both_layouts):
    _, mevis = both_layouts
    mask_dict = json.loads((mevis / "train" / "mask_dict.json").read_text())
    entries = [rle for rles in mask_dict.values() for rle in rles]
    assert all(rle is None or rle_to_mask(rle).any() for rle in entries)
    assert sorted(mask_dict, key=int) == [str(i) for i in range(len(mask_dict))]  # one id an object, in order


def test_the_default_layout_is_unchanged(tmp_path):
    """The expressions and annotations of the Ref-YouTube-VOS layout, as generated before the MeViS layout existed
    (the demo and its recorded numbers depend on them)."""
    digest = hashlib.sha256()
    root = tmp_path / "r"
    generate_refshapes(root, num_videos=3, num_valid_videos=2, num_frames=4, size=32, seed=0)
    for split in ("train", "valid"):
        digest.update((root / "meta_expressions" / split / "meta_expressions.json").read_bytes())
        for png in sorted((root / split / "Annotations").rglob("*.png")):
            digest.update(str(png.relative_to(root)).encode())
            digest.update(np.asarray(Image.open(png)).tobytes())
    assert digest.hexdigest() == "d36194585a1ed7c768c996b133239143f9ee1ee6a92fc601330962cf9a8bb629"


def scene_object(obj_id, colour, shape, size, motion) -> SceneObject:
    return SceneObject(obj_id, shape, colour, size, motion, 10.0, np.zeros((4, 2)))


def test_group_candidates_on_a_hand_built_scene():
    """1 small red circle and 2 big red circle move left, 3 small blue square moves up, 4 small red square left."""
    objects = [scene_object(1, "red", "circle", "small", "left"), scene_object(2, "red", "circle", "big", "left"),
               scene_object(3, "blue", "square", "small", "up"), scene_object(4, "red", "square", "small", "left")]
    candidates = group_candidates(np.random.default_rng(0), objects)
    # Every attribute group of two or more: small {1,3,4}, red {1,2,4}, circles {1,2}, squares and small squares
    # {3,4}, small red {1,4}, red circles {1,2}.
    assert {tuple(ids) for _, ids in candidates["group"]} == {(1, 3, 4), (1, 2, 4), (1, 2), (3, 4), (1, 4)}
    # Motion picks a part of a group: the shapes moving left {1,2,4} (3 moves up), the small ones moving left {1,4}.
    assert {tuple(ids) for _, ids in candidates["group_motion"]} == {(1, 2, 4), (1, 4)}
    for sentence, ids in candidates["group"]:
        words = sentence.removeprefix("all ").split()
        assert words[0] == "the" and words[-1] in ("circles", "squares", "shapes", "objects")
        if words[1] in ("two", "three"):
            assert {"two": 2, "three": 3}[words[1]] == len(ids)
    assert all(("left" in s) for s, _ in candidates["group_motion"])


def test_cli_writes_the_mevis_layout(tmp_path):
    done = subprocess.run([sys.executable, "-m", "scripts.make_refshapes", "--out", str(tmp_path / "m"), "--videos",
                           "2", "--valid_videos", "1", "--frames", "3", "--size", "32", "--format", "mevis"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "(mevis layout)" in done.stdout
    assert sorted(meta(tmp_path / "m" / "train" / "meta_expressions.json")) == ["rs_train_0000", "rs_train_0001"]
    assert (tmp_path / "m" / "valid_u" / "mask_dict.json").is_file()
    assert not (tmp_path / "m" / "valid" / "mask_dict.json").exists()
