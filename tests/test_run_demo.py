"""The demo driver (scripts/run_demo.py): its flags, stage clock and the options beyond the paper."""
from pathlib import Path

import torch

from scripts import run_demo
from tests.cli_help import assert_help_explains_every_flag
from util.config import get_key, load_config, save_config

REPO = Path(__file__).resolve().parents[1]


def test_options_beyond_paper_names_only_what_is_switched_on(tmp_path):
    cfg = load_config(REPO / "configs" / "refshapes_tiny.yaml")  # resolved, as main.py saves it beside a run
    cfg["model"].update(vl_fusion=False, pixel_referring=False)
    cfg["data"]["sentences_per_clip"] = 1
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert run_demo.options_beyond_paper(path) == {}
    cfg["model"]["pixel_referring"] = True
    cfg["data"]["sentences_per_clip"] = 3
    save_config(cfg, path)
    assert run_demo.options_beyond_paper(path) == {"model.pixel_referring": True, "data.sentences_per_clip": 3}
    paper = load_config(REPO / "configs" / "ytvos_hcd.yaml")  # the paper's values come from its config
    assert {key: get_key(paper, key) for key in run_demo.BEYOND_PAPER_KEYS} == {
        "model.vl_fusion": False, "model.pixel_referring": False, "model.text_alignment": False,
        "model.sentence_queries": False, "model.object_referring": False, "data.sentences_per_clip": 1}


def test_stage_clock_records_each_stage_in_order(monkeypatch):
    now = iter([100.0, 101.5, 104.0])
    monkeypatch.setattr(run_demo.time, "time", lambda: next(now))
    clock = run_demo.StageClock()
    clock.done("weights")
    clock.done("training")
    assert clock.seconds == {"weights": 1.5, "training": 2.5}
    assert list(clock.seconds) == ["weights", "training"]


def test_device_defaults_to_the_gpu_when_one_is_visible(monkeypatch):
    for visible, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: visible)
        assert run_demo.parse_args([]).device == expected
        assert run_demo.parse_args(["--device", "cpu"]).device == "cpu"


def test_help_explains_every_flag(capsys):
    assert_help_explains_every_flag(run_demo.build_parser(), capsys)
