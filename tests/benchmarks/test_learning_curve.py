"""benchmarks/learning_curve.py: the valid scores of a model, the step-time average, and (slow) a resumed curve."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.learning_curve import evaluate, main, mean_step_seconds, steps_for
from datasets.ytvos import read_meta_expressions
from inference.predictor import Predictor
from util.config import load_config
from util.cpu_threads import ThreadGovernor
from util.errors import UserInputError

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "refshapes_tiny.yaml"


def test_the_scorer_and_the_probe_agree_on_the_selected_masks(tiny_model_dir, tiny_weights, refshapes_root, tmp_path,
                                                               one_thread):
    """J of the written masks (metrics.ytvos, the scorer of inference_ytvos.py) is the probe's selected-slot J."""
    scores = evaluate(Predictor.load(tiny_model_dir, tiny_weights), refshapes_root, tmp_path / "valid",
                      ThreadGovernor())
    videos = read_meta_expressions(refshapes_root, "valid")
    expressions = [(video, exp_id) for video, entry in videos.items() for exp_id in entry["expressions"]]
    assert sum(kind["count"] for kind in scores["by_kind"].values()) == len(expressions)
    assert all((tmp_path / "valid" / "Annotations" / video / exp_id).is_dir() for video, exp_id in expressions)
    assert scores["J"] == pytest.approx(scores["selected_J"], abs=1e-12)
    assert scores["best_slot_J"] >= scores["selected_J"]
    assert 0 < scores["random_object_J"] < 1


def test_step_seconds_are_averaged_over_the_steps_each_record_covers(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"step": 10, "time": 1.0}, {"step": 20, "time": 2.0}, {"step": 25, "time": 4.0}]
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert mean_step_seconds(log, after_step=10) == pytest.approx((2.0 * 10 + 4.0 * 5) / 15)
    assert mean_step_seconds(log, after_step=0) == pytest.approx((10 + 20 + 20) / 25)
    assert mean_step_seconds(log, after_step=25) is None
    assert mean_step_seconds(tmp_path / "absent.jsonl", after_step=0) is None
    assert steps_for(7, 2) == 4 and steps_for(8, 2) == 4


@pytest.mark.slow
def test_a_curve_resumes_its_run_and_keeps_its_points(tiny_weights, refshapes_root, tmp_path, capsys):
    cfg = load_config(CONFIG)
    cfg["data"].update(train_scales=[32], max_size=32, test_size=32)
    config = tmp_path / "tiny32.yaml"
    config.write_text(yaml.safe_dump(cfg))
    common = ["--data_root", str(refshapes_root), "--weights", str(tiny_weights), "--out", str(tmp_path / "curve"),
              "--config", str(config), "--set", "data.sentences_per_clip=2", "--device", "cpu", "--json"]
    main(common + ["--samples", "4", "8"])
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(p["samples"], p["steps"], p["clips"]) for p in first["points"]] == [(4, 1, 2), (8, 2, 4)]
    assert first["samples_per_step"] == 4 and 0 < first["baseline"]["JF"] < 1

    main(common + ["--samples", "4", "8", "12"])
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["points"][:2] == first["points"]  # kept, not re-measured
    assert second["points"][2]["steps"] == 3
    assert torch.load(tmp_path / "curve" / "train" / "last.pth", weights_only=False)["step"] == 3
    with pytest.raises(UserInputError, match=r"6 samples \(2 steps\) lie before the run's checkpoint"):
        main(common + ["--samples", "6"])  # the 3-step checkpoint cannot stand for 2 steps
