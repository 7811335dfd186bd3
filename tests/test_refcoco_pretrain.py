"""The two-stage recipe end to end on the tiny model: pretraining on RefShapes still images in the RefCOCO layout,
its image-level evaluation (oIoU / mIoU), then a new run on RefShapes videos from its weights (--init_from); the
evaluation scores a ground-truth stand-in 1 and an empty one 0."""
import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

import main
from datasets.refcoco import RefCOCOImages
from datasets.refshapes import generate_refshapes
from datasets.transforms_video import make_test_transforms
from evaluate import evaluate_refcoco
from util.checkpoint import load_checkpoint
from util.config import load_config

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--device", "cpu", "--max_steps", "2", "--set", "data.num_frames=2", "--set", "data.train_scales=[64]",
         "--set", "data.max_size=64", "--set", "data.test_size=64", "--set", "train.log_every=1"]


def test_refcoco_pretraining_then_init_from_fine_tuning(tmp_path, refshapes_root, tiny_weights, one_thread):
    refcoco = tmp_path / "refshapes_refcoco"
    generate_refshapes(refcoco, num_videos=3, num_valid_videos=1, num_frames=4, size=64, seed=0, layout="refcoco")
    pretrain, finetune = tmp_path / "pretrain", tmp_path / "finetune"

    assert main.main(["--config", str(REPO / "configs" / "refshapes_refcoco_tiny.yaml"), "--data_root", str(refcoco),
                      "--weights", str(tiny_weights), "--output_dir", str(pretrain), *SMALL]) == 0
    stage1 = load_checkpoint(pretrain / "last.pth")
    assert stage1["step"] == 2 and stage1["config"]["dataset"] == "refcoco"

    main.main(["--eval", "--resume", str(pretrain / "last.pth"), "--device", "cpu"])
    scores = json.loads((pretrain / "eval_refcoco.json").read_text())["refcoco"]
    val = json.loads((refcoco / "refcoco" / "instances_refcoco_val.json").read_text())
    assert scores["samples"] == len(val["images"]) > 0

    assert main.main(["--config", str(REPO / "configs" / "refshapes_tiny.yaml"), "--data_root", str(refshapes_root),
                      "--weights", str(tiny_weights), "--output_dir", str(finetune),
                      "--init_from", str(pretrain / "last.pth"), *SMALL]) == 0
    record = json.loads((finetune / "init_from.json").read_text())
    assert record["loaded"] == sorted(stage1["model"]) and record["missing"] == record["unexpected"] == []
    stage2 = load_checkpoint(finetune / "last.pth")
    assert (stage2["epoch"], stage2["step"]) == (0, 2) and stage2["config"]["dataset"] == "refshapes"


def test_init_from_another_width_fails_before_the_run_starts(tmp_path, tiny_weights, one_thread):
    """A checkpoint of a model with other widths: the error lists the tensors and shapes; no output folder."""
    refcoco = tmp_path / "rc"
    generate_refshapes(refcoco, num_videos=2, num_valid_videos=0, num_frames=2, size=64, seed=1, layout="refcoco")
    source = tmp_path / "narrow"
    main.main(["--config", str(REPO / "configs" / "refshapes_refcoco_tiny.yaml"), "--data_root", str(refcoco),
               "--weights", str(tiny_weights), "--output_dir", str(source), *SMALL[:-2], "--max_steps", "1",
               "--set", "model.num_queries=3"])
    with pytest.raises(ValueError, match=r"query_embed\.weight: .*last\.pth \(3, 64\), model \(5, 64\)"):
        main.main(["--config", str(REPO / "configs" / "refshapes_refcoco_tiny.yaml"), "--data_root", str(refcoco),
                   "--weights", str(tiny_weights), "--output_dir", str(tmp_path / "out"),
                   "--init_from", str(source / "last.pth"), *SMALL])
    assert not (tmp_path / "out").exists()


def test_pretraining_launcher_dry_run():
    from tests.test_launch_scripts import dry_run, flag, parse_block

    (command,), (block,) = dry_run("dist_train_refcoco_hcd.sh")
    assert flag(command, "--config") == "configs/refcoco_pretrain_hcd.yaml" and flag(command, "--nproc_per_node") == "8"
    assert flag(command, "--data_root") == "data/coco"
    cfg = parse_block(block)
    assert cfg["dataset"] == "refcoco" and cfg["data"]["refcoco_sets"] == ["refcoco", "refcoco+", "refcocog"]


class GroundTruthImageStandIn(nn.Module):
    """Outputs, for each (image, sentence) of a RefCOCO val json, that sample's mask as logits +-10 (``empty``:
    no pixel); the image is recognised by its preprocessed pixels, the sample by its sentence."""

    def __init__(self, dataset: RefCOCOImages, test_size: int, empty: bool = False):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        transforms = make_test_transforms(test_size, test_size)
        self.samples = [(transforms([image], {}, random.Random(0))[0], sentence, torch.from_numpy(mask))
                        for image, sentence, mask in dataset]
        self.empty = empty

    def forward(self, samples, captions, targets=None, refine_all_queries=False):
        frame = samples.tensors[0]  # [1, 3, Hp, Wp]
        out = torch.full((len(captions), 1, *frame.shape[-2:]), -10.0)
        for index, caption in enumerate(captions):
            (mask,) = [mask for pixels, sentence, mask in self.samples if sentence == caption
                       and torch.equal(frame[..., :pixels.shape[-2], :pixels.shape[-1]], pixels)]
            if not self.empty:
                out[index, 0, :mask.shape[0], :mask.shape[1]] = mask.float() * 20 - 10
        return {"pred_masks": out}


@pytest.mark.parametrize("empty", [False, True])
def test_refcoco_evaluation_scores_the_ground_truth_one_and_nothing_zero(tmp_path, empty):
    """At test_size = the image size nothing is resized, so the ground truth's own mask must score exactly 1 and
    an empty prediction exactly 0 (every RefShapes object has pixels)."""
    root = tmp_path / "refshapes_refcoco"
    generate_refshapes(root, num_videos=1, num_valid_videos=2, num_frames=4, size=64, seed=1, layout="refcoco")
    cfg = load_config(REPO / "configs" / "refshapes_refcoco_tiny.yaml")
    cfg.update(data_root=str(root), output_dir=str(tmp_path / "out"))
    cfg["data"].update(test_size=64, max_size=64, refcoco_sets=["refcoco"])
    model = GroundTruthImageStandIn(RefCOCOImages(root, "refcoco", "val"), test_size=64, empty=empty)
    scores = evaluate_refcoco(model, cfg)["refcoco"]
    expected = 0.0 if empty else 1.0
    val = json.loads((root / "refcoco" / "instances_refcoco_val.json").read_text())
    assert scores["samples"] == len(val["images"]) > 1
    assert scores["oIoU"] == scores["mIoU"] == scores["P@0.9"] == expected
