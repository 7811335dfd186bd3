"""evaluate.py: the A2D/JHMDB protocol on the annotated frame (mini datasets in the real formats, stand-in models
whose outputs are chosen, and the tiny HCD) and the RefShapes J&F path (tiny HCD, and a stand-in that outputs
the ground truth)."""
import json
import os
import random
import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from datasets import load_frames, read_meta_expressions
from datasets.transforms_video import make_test_transforms
from datasets.ytvos import load_object_masks, normalize_caption
from evaluate import PREDICTION_DIR, annotated_frame_predictions, run_evaluation
from inference.writers import check_tree, expected_masks
from metrics.a2d import top1_predictions
from models import build_model
from models.pretrained import load_pretrained
from util.config import load_config
from util.mask_rle import rle_to_mask

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "refshapes_tiny.yaml"
H, W = 40, 56  # original frame size of the mini A2D / JHMDB videos
NUM_FRAMES = 4  # window length: the annotated frame sits at index 2
NO_AMP = Namespace(amp=None)
METRIC_KEYS = {"mAP", "AP50", "AP75", "overall_iou", "mean_iou", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9",
               "mAP_top1", "AP50_top1", "AP75_top1", "num_samples", "map_over"}

# ------------------------------------------------------------------------------------- mini A2D / JHMDB


def box_mask(top: int, left: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[top:top + height, left:left + width] = True
    return mask


# (video, frame count, 1-based annotated frame, instance, sentence, mask): the annotated frames include the first
# and the last frame of a video, where the window is clamped.
A2D_SAMPLES = [
    ("va", 6, 3, 1, "the man walking on the left", box_mask(3, 2, 20, 9)),
    ("va", 6, 3, 2, "a dog running", box_mask(18, 25, 17, 30)),
    ("vb", 5, 1, 1, "a bird flying", box_mask(0, 40, 9, 16)),
    ("vc", 5, 5, 1, "the red car", box_mask(11, 7, 29, 33)),
]


def write_mp4(path: Path, num_frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for number in range(num_frames):
            image = np.full((H, W, 3), 30 + 40 * number, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_h5(path: Path, instances: list[int], masks: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = np.stack([mask.T for mask in masks]).astype(np.uint8)  # A2D stores [N, W, H]
    with h5py.File(path, "w") as f:
        f["instance"] = np.array(instances, dtype=np.float64)
        f["reMask"] = stored[0] if len(instances) == 1 else stored
        f["reBBox"] = np.zeros((4, len(instances)))


def build_a2d(root: Path) -> None:
    """A2D-Sentences files for ``A2D_SAMPLES`` (test subset) plus one train video that evaluation must skip."""
    release, text = root / "Release", root / "text_annotations"
    text.mkdir(parents=True)
    videos = {video: count for video, count, *_ in A2D_SAMPLES}
    rows = [f"{video},11,0,1,{H},{W},{count},1,1" for video, count in videos.items()] + [f"vt,11,0,1,{H},{W},5,1,0"]
    (release / "clips320H").mkdir(parents=True)
    (release / "videoset.csv").write_text("\n".join(rows) + "\n")
    for video, count in {**videos, "vt": 5}.items():
        write_mp4(release / "clips320H" / f"{video}.mp4", count)
    (text / "a2d_missed_videos.txt").write_text("")
    lines = [f"{video},{instance},{sentence}" for video, _, _, instance, sentence, _ in A2D_SAMPLES]
    (text / "a2d_annotation.txt").write_text("\n".join(["video_id,instance_id,query", *lines, "vt,1,a train cat"]))
    by_file: dict[Path, list] = {}
    for video, _, frame, instance, _, mask in A2D_SAMPLES + [("vt", 5, 2, 1, "", box_mask(0, 0, 5, 5))]:
        path = text / "a2d_annotation_with_instances" / video / f"{frame:05d}.h5"
        by_file.setdefault(path, []).append((instance, mask))
    for path, entries in by_file.items():
        write_h5(path, [i for i, _ in entries], [m for _, m in entries])


def build_jhmdb(root: Path, mask: np.ndarray, num_frames: int = 7) -> str:
    """One JHMDB-Sentences video whose puppet mask is ``mask`` in every frame; returns its sentence."""
    frames = root / "Rename_Images" / "wave" / "v1"
    frames.mkdir(parents=True)
    for number in range(1, num_frames + 1):
        Image.fromarray(np.full((H, W, 3), 20 * number, dtype=np.uint8)).save(frames / f"{number:05d}.png")
    (root / "puppet_mask" / "wave" / "v1").mkdir(parents=True)
    part_mask = np.repeat(mask[:, :, None], num_frames, axis=2).astype(np.uint8)  # [H, W, T]
    scipy.io.savemat(root / "puppet_mask" / "wave" / "v1" / "puppet_mask.mat", {"part_mask": part_mask})
    (root / "jhmdb_annotation.txt").write_text("video_id,query\nv1,a man waving his hand\n")
    return "a man waving his hand"


def a2d_config(root: Path, output_dir: Path, dataset: str = "a2d", test_size: int = 80) -> dict:
    # test_size 80 doubles the 40-pixel short side: a nearest 2x upsampling that nearest resizing undoes exactly
    return {"dataset": dataset, "data_root": str(root), "output_dir": str(output_dir), "seed": 0,
            "data": {"num_frames": NUM_FRAMES, "test_size": test_size, "max_size": 1000, "size_divisibility": 32},
            "train": {"batch_size": 3, "num_workers": 0}}


@pytest.fixture(scope="module")
def a2d_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("a2d")
    build_a2d(root)
    return root


class AnnotatedFrameStandIn(nn.Module):
    """Returns chosen outputs for A2D-style windows (the annotated frame is index ``T // 2``), 3 query slots:

    - slot 0: the ground-truth mask on frame ``gt_frame`` ("annotated" or "first") and its complement on the other
      frames; logit +4 on the annotated frame, -4 elsewhere;
    - slot 1: the complement of the ground truth everywhere; logit +6 on every frame except the annotated one,
      where it is +6 with ``distractor_wins`` and -6 otherwise (so it wins on frame 0 and on the frame average);
    - slot 2: an empty mask with logit -8.
    """

    def __init__(self, masks_by_caption: dict[str, np.ndarray], gt_frame: str = "annotated",
                 distractor_wins: bool = False):
        super().__init__()
        self.masks = {normalize_caption(c): torch.from_numpy(m).float() for c, m in masks_by_caption.items()}
        self.gt_frame, self.distractor_wins = gt_frame, distractor_wins
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the evaluation a device to read

    def forward(self, samples, captions, targets=None, refine_all_queries=False):
        if not refine_all_queries:
            raise AssertionError("the A2D protocol scores every slot: refine_all_queries must be True")
        batch, num_frames, _, height, width = samples.tensors.shape
        annotated = num_frames // 2
        gt_index = annotated if self.gt_frame == "annotated" else 0
        logits = torch.full((batch, num_frames, 3, 1), -8.0)
        logits[:, :, 0] = -4.0
        logits[:, annotated, 0] = 4.0
        logits[:, :, 1] = 6.0
        logits[:, annotated, 1] = 6.0 if self.distractor_wins else -6.0
        masks = torch.full((batch, num_frames, 3, height, width), -10.0)
        for index, caption in enumerate(captions):
            valid = ~samples.mask[index, 0]  # [Hp, Wp]
            h, w = int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum())
            gt = F.interpolate(self.masks[caption][None, None], size=(h, w), mode="nearest")[0, 0]
            logits_gt, logits_rest = gt * 20 - 10, (1 - gt) * 20 - 10
            masks[index, :, 0, :h, :w] = logits_rest
            masks[index, gt_index, 0, :h, :w] = logits_gt
            masks[index, :, 1, :h, :w] = logits_rest
        return {"pred_logits": logits, "pred_masks": masks}


def last_json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_annotated_frame_predictions_crop_resize_and_score_by_hand():
    pattern = torch.tensor([[3.0, -3.0, 3.0], [-3.0, 3.0, -3.0]])
    pred_masks = torch.full((1, 3, 2, 4, 4), 7.0)  # padding and the other frames are foreground: never read
    pred_masks[0, 1, 0, :2, :3] = pattern
    pred_masks[0, 1, 1, :2, :3] = -1.0
    pred_logits = torch.tensor([[[[5.0], [-5.0]], [[0.0], [2.0]], [[5.0], [-5.0]]]])  # [1, 3, 2, 1]
    target = {"annotated_index": 1, "image_id": "v_x_f_2_i_1", "size": torch.tensor([2, 3]),
              "orig_size": torch.tensor([4, 6])}
    predictions = annotated_frame_predictions({"pred_logits": pred_logits, "pred_masks": pred_masks}, [target])
    assert [p["image_id"] for p in predictions] == ["v_x_f_2_i_1"] * 2
    assert [p["score"] for p in predictions] == pytest.approx([0.5, 1 / (1 + np.exp(-2.0))])
    expected = np.kron((pattern > 0).numpy(), np.ones((2, 2), dtype=bool))  # nearest 2x of the unpadded crop
    np.testing.assert_array_equal(rle_to_mask(predictions[0]["segmentation"]), expected)
    assert not rle_to_mask(predictions[1]["segmentation"]).any()
    assert top1_predictions(predictions) == [predictions[1]]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a2d_stand_in_with_ground_truth_on_the_annotated_frame_scores_one(a2d_root, tmp_path, capsys):
    masks = {sentence: mask for *_, sentence, mask in A2D_SAMPLES}
    cfg = a2d_config(a2d_root, tmp_path / "out")
    results = run_evaluation(AnnotatedFrameStandIn(masks), cfg, NO_AMP)
    assert set(results) == METRIC_KEYS
    assert results["num_samples"] == len(A2D_SAMPLES) and results["map_over"] == "all_queries"
    for key in METRIC_KEYS - {"num_samples", "map_over"}:
        assert results[key] == pytest.approx(1.0), key
    assert last_json_line(capsys) == results
    assert json.loads((tmp_path / "out" / "eval_a2d.json").read_text()) == results


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_evaluate_py_protocol_a2d_rescores_the_kept_predictions_to_the_same_json(a2d_root, tmp_path, capsys):
    from tests.scripts import scorer_output

    masks = {sentence: mask for *_, sentence, mask in A2D_SAMPLES}
    # The distractor wins the top slot: mAP 0.5, IoU 0, so the numbers are not all one.
    results = run_evaluation(AnnotatedFrameStandIn(masks, distractor_wins=True), a2d_config(a2d_root, tmp_path),
                             NO_AMP)
    printed = capsys.readouterr().out
    kept = tmp_path / "eval_a2d"
    assert sorted(path.name for path in kept.iterdir()) == ["ground_truth.json", "predictions.json"]
    assert scorer_output(["--protocol", "a2d", "--pred_dir", str(kept), "--gt_root", str(kept)]) == printed
    assert json.loads(printed.splitlines()[-1]) == results and results["mAP"] == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a2d_ground_truth_on_frame_0_instead_of_the_annotated_frame_scores_zero(a2d_root, tmp_path):
    masks = {sentence: mask for *_, sentence, mask in A2D_SAMPLES}
    results = run_evaluation(AnnotatedFrameStandIn(masks, gt_frame="first"), a2d_config(a2d_root, tmp_path), NO_AMP)
    assert results["mAP"] == 0.0 and results["overall_iou"] == 0.0 and results["P@0.5"] == 0.0
    assert results["mean_iou"] < 1e-6


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a2d_map_counts_every_query_and_iou_only_the_top_one(a2d_root, tmp_path):
    masks = {sentence: mask for *_, sentence, mask in A2D_SAMPLES}
    results = run_evaluation(AnnotatedFrameStandIn(masks, distractor_wins=True), a2d_config(a2d_root, tmp_path),
                             NO_AMP)
    # per image a wrong top slot, then the right one: 4 false positives rank above the 4 true positives, so the
    # precision envelope is 4/8 at every recall
    assert results["mAP"] == pytest.approx(0.5) and results["AP50"] == pytest.approx(0.5)
    assert results["mAP_top1"] == 0.0 and results["overall_iou"] == 0.0 and results["P@0.5"] == 0.0


def test_jhmdb_stand_in_scores_one_on_its_three_frames(tmp_path, capsys):
    mask = box_mask(5, 10, 20, 25)
    sentence = build_jhmdb(tmp_path / "jhmdb", mask)
    cfg = a2d_config(tmp_path / "jhmdb", tmp_path / "out", dataset="jhmdb")
    results = run_evaluation(AnnotatedFrameStandIn({sentence: mask}), cfg, NO_AMP)
    assert results["num_samples"] == 3 and results["overall_iou"] == pytest.approx(1.0)
    assert results["mAP"] == pytest.approx(1.0) and results["P@0.9"] == 1.0
    assert last_json_line(capsys) == results
    assert (tmp_path / "out" / "eval_jhmdb.json").is_file()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a2d_on_the_tiny_hcd(a2d_root, tiny_weights, tmp_path):
    cfg = load_config(CONFIG)
    cfg.update(a2d_config(a2d_root, tmp_path, test_size=32), weights=str(tiny_weights))
    cfg["data"]["num_frames"] = 2  # annotated frame at index 1; small to keep the test fast
    torch.manual_seed(0)
    model, _ = build_model(cfg, load_pretrained(tiny_weights))
    results = run_evaluation(model, cfg, NO_AMP)
    assert results["num_samples"] == len(A2D_SAMPLES) and set(results) == METRIC_KEYS
    # The overall IoU again, by hand, from the files the evaluation kept: every image's highest-scoring slot.
    kept = tmp_path / "eval_a2d"
    predictions = json.loads((kept / "predictions.json").read_text())
    ground_truth = json.loads((kept / "ground_truth.json").read_text())
    best = {}
    for prediction in predictions:
        if prediction["image_id"] not in best or prediction["score"] >= best[prediction["image_id"]]["score"]:
            best[prediction["image_id"]] = prediction
    assert len(best) == len(ground_truth["annotations"]) == len(A2D_SAMPLES)
    intersection = union = 0
    for annotation in ground_truth["annotations"]:
        pred = rle_to_mask(best[annotation["image_id"]]["segmentation"]).astype(bool)
        gt = rle_to_mask(annotation["segmentation"]).astype(bool)
        intersection, union = intersection + (pred & gt).sum(), union + (pred | gt).sum()
    assert results["overall_iou"] == pytest.approx(intersection / union)


# ------------------------------------------------------------------------------------------------ RefShapes


def refshapes_config(root: Path, weights: Path, output_dir: Path, test_size: int = 64) -> dict:
    """The tiny config on the fixture's RefShapes, whose frames are 64 x 64 (test_size 64: no resize)."""
    cfg = load_config(CONFIG)
    cfg.update(data_root=str(root), weights=str(weights), output_dir=str(output_dir))
    cfg["data"]["test_size"] = cfg["data"]["max_size"] = test_size
    return cfg


class GroundTruthVideoStandIn(nn.Module):
    """Outputs, for each sentence of a RefShapes valid video, its ground-truth masks as logits +-10; the video is
    recognised by its preprocessed frames."""

    def __init__(self, root: Path, test_size: int):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        transforms = make_test_transforms(test_size, test_size)
        self.videos = []  # (frames [T, 3, h, w], {sentence: masks [T, H, W]})
        for video, entry in read_meta_expressions(root, "valid").items():
            frames = load_frames(root, "valid", video, entry["frames"])
            size = (frames[0].height, frames[0].width)
            masks = {normalize_caption(e["exp"]): load_object_masks(root, "valid", video, entry["frames"],
                                                                     int(e["obj_id"]), size)
                     for e in entry["expressions"].values()}
            self.videos.append((transforms(frames, {}, random.Random(0))[0], masks))

    def forward(self, samples, captions, targets=None, refine_all_queries=False):
        clip = samples.tensors[0]  # [T, 3, Hp, Wp]
        matches = [(frames, masks) for frames, masks in self.videos
                   if frames.shape[0] == clip.shape[0] and torch.equal(clip[..., :frames.shape[-2], :frames.shape[-1]],
                                                                       frames)]
        assert len(matches) == 1, "the stand-in recognises exactly one video"
        frames, masks = matches[0]
        h, w = frames.shape[-2:]
        out = torch.full((len(captions), clip.shape[0], *clip.shape[-2:]), -10.0)
        for index, caption in enumerate(captions):
            gt = F.interpolate(torch.from_numpy(masks[caption]).float()[:, None], size=(h, w), mode="nearest")[:, 0]
            out[index, :, :h, :w] = gt * 20 - 10
        return {"pred_masks": out}


def mean_jaccard_by_hand(root: Path, pred_dir: Path) -> float:
    """Ref-YouTube-VOS J of a prediction tree: per expression the mean over its frames of |P & G| / |P | G| (1 when
    both are empty), then the mean over expressions."""
    per_expression = []
    for video, entry in read_meta_expressions(root, "valid").items():
        for exp_id, expression in entry["expressions"].items():
            values = []
            for frame in entry["frames"]:
                truth = np.asarray(Image.open(root / "valid" / "Annotations" / video / f"{frame}.png")) == int(
                    expression["obj_id"])
                predicted = np.asarray(Image.open(pred_dir / "Annotations" / video / exp_id / f"{frame}.png")) > 0
                union = (truth | predicted).sum()
                values.append((truth & predicted).sum() / union if union else 1.0)
            per_expression.append(np.mean(values))
    return float(np.mean(per_expression))


def refshapes_tree_problems(root: Path, pred_dir: Path) -> list[str]:
    videos = read_meta_expressions(root, "valid")
    sizes = {video: Image.open(root / "valid" / "JPEGImages" / video / f"{e['frames'][0]}.jpg").size
             for video, e in videos.items()}
    return check_tree(pred_dir, expected_masks(videos, sizes))


def test_refshapes_on_the_tiny_hcd_writes_a_complete_tree_and_scores_it(refshapes_root, tiny_weights, tmp_path,
                                                                         capsys):
    cfg = refshapes_config(refshapes_root, tiny_weights, tmp_path / "out", test_size=32)  # masks upsampled to 64
    torch.manual_seed(0)
    model, _ = build_model(cfg, load_pretrained(tiny_weights))
    results = run_evaluation(model, cfg, NO_AMP)
    assert set(results) == {"J", "F", "JF", "by_kind"}
    assert refshapes_tree_problems(refshapes_root, tmp_path / "out" / PREDICTION_DIR) == []
    assert results["J"] == pytest.approx(mean_jaccard_by_hand(refshapes_root, tmp_path / "out" / PREDICTION_DIR))
    assert results["JF"] == pytest.approx((results["J"] + results["F"]) / 2)
    assert sum(kind["count"] for kind in results["by_kind"].values()) == sum(
        len(entry["expressions"]) for entry in read_meta_expressions(refshapes_root, "valid").values())
    assert last_json_line(capsys) == results
    assert json.loads((tmp_path / "out" / "eval_refshapes.json").read_text()) == results


def test_refshapes_stand_in_with_the_ground_truth_scores_one(refshapes_root, tmp_path):
    cfg = refshapes_config(refshapes_root, Path("unused"), tmp_path / "out")
    results = run_evaluation(GroundTruthVideoStandIn(refshapes_root, 64), cfg, NO_AMP)
    assert results["J"] == pytest.approx(1.0) and results["F"] == pytest.approx(1.0)
    assert all(kind["JF"] == pytest.approx(1.0) for kind in results["by_kind"].values())
    assert refshapes_tree_problems(refshapes_root, tmp_path / "out" / PREDICTION_DIR) == []


def test_davis_config_says_its_numbers_are_the_ytvos_protocol(refshapes_root, tmp_path, capsys):
    cfg = refshapes_config(refshapes_root, Path("unused"), tmp_path / "out")
    cfg.update(dataset="davis")
    cfg["inference"]["clip_len"] = 8  # the fixture's videos have 8 frames: the stand-in sees each whole
    results = run_evaluation(GroundTruthVideoStandIn(refshapes_root, 64), cfg, NO_AMP)
    assert results["protocol"] == "ytvos" and results["JF"] == pytest.approx(1.0)
    assert set(results) == {"J", "F", "JF", "by_kind", "protocol"}
    out = capsys.readouterr().out
    assert "inference_davis.py (evaluate.py --protocol davis)" in out.splitlines()[0]
    assert json.loads(out.splitlines()[-1]) == results


def test_unknown_dataset_and_fp16_on_refshapes_are_refused(refshapes_root, tmp_path):
    cfg = refshapes_config(refshapes_root, Path("unused"), tmp_path)
    with pytest.raises(ValueError, match="--amp none or --amp bf16"):
        run_evaluation(GroundTruthVideoStandIn(refshapes_root, 64), cfg, Namespace(amp="fp16"))
    with pytest.raises(ValueError, match="cannot evaluate dataset 'coco'"):
        run_evaluation(nn.Linear(1, 1), {**cfg, "dataset": "coco"}, NO_AMP)


# ------------------------------------------------------------------------------------------- two processes

TWO_RANK_SCRIPT = """
import json, sys
from argparse import Namespace
from pathlib import Path
from tests.test_evaluate import (A2D_SAMPLES, AnnotatedFrameStandIn, GroundTruthVideoStandIn, a2d_config,
                                 refshapes_config)
from evaluate import run_evaluation
from util.distributed import cleanup, get_rank, init_distributed

a2d_root, refshapes_root, out = map(Path, sys.argv[1:4])
init_distributed("cpu")
masks = {sentence: mask for *_, sentence, mask in A2D_SAMPLES}
a2d = run_evaluation(AnnotatedFrameStandIn(masks), a2d_config(a2d_root, out / "a2d"), Namespace(amp=None))
cfg = refshapes_config(refshapes_root, Path("unused"), out / "refshapes")
refshapes = run_evaluation(GroundTruthVideoStandIn(refshapes_root, 64), cfg, Namespace(amp=None))
(out / f"rank{get_rank()}.json").write_text(json.dumps({"a2d": a2d, "refshapes": refshapes}))
cleanup()
"""


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_gloo_processes_share_the_samples_and_rank_0_scores_them_all(a2d_root, refshapes_root, tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(textwrap.dedent(TWO_RANK_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(a2d_root), str(refshapes_root), str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank1 == {"a2d": {}, "refshapes": {}}
    assert rank0["a2d"]["num_samples"] == len(A2D_SAMPLES)  # two samples a rank, gathered on rank 0
    assert rank0["a2d"]["mAP"] == pytest.approx(1.0) and rank0["a2d"]["overall_iou"] == pytest.approx(1.0)
    assert rank0["refshapes"]["JF"] == pytest.approx(1.0)  # both ranks' videos were written before scoring
    assert refshapes_tree_problems(refshapes_root, tmp_path / "refshapes" / PREDICTION_DIR) == []
