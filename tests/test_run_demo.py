"""The demo driver's report helpers (scripts/run_demo.py): stage clock and the options beyond the paper."""
from pathlib import Path

import yaml
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[1]
run_demo = load_script("run_demo")


def test_options_beyond_paper_names_only_what_is_switched_on(tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "refshapes_tiny.yaml").read_text())
    cfg["model"].update(vl_fusion=False, pixel_referring=False)
    cfg["data"]["sentences_per_clip"] = 1
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_demo.options_beyond_paper(path) == {}
    cfg["model"]["pixel_referring"] = True
    cfg["data"]["sentences_per_clip"] = 3
    path.write_text(yaml.safe_dump(cfg))
    assert run_demo.options_beyond_paper(path) == {"model.pixel_referring": True, "data.sentences_per_clip": 3}


def test_stage_clock_records_each_stage_in_order(monkeypatch):
    now = iter([100.0, 101.5, 104.0])
    monkeypatch.setattr(run_demo.time, "time", lambda: next(now))
    clock = run_demo.StageClock()
    clock.done("weights")
    clock.done("training")
    assert clock.seconds == {"weights": 1.5, "training": 2.5}
    assert list(clock.seconds) == ["weights", "training"]
