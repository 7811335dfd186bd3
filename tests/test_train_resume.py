"""main.py end to end on stand-ins: exact resume, checkpoint files, saved config, CLI, --eval hook."""
import json
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

import main
from tests import train_standins
from tests.cli_help import assert_help_explains_every_flag
from util.checkpoint import load_checkpoint, trainable_state_dict
from util.config import ConfigError, load_config

# 4 steps an epoch (one clip dropped); the lr drops after epoch 1.
CONFIG = train_standins.tiny_config(seed=7, epochs=3, lr_drop=[1], checkpoint_every=2)


@pytest.fixture(autouse=True)
def standins(monkeypatch):
    train_standins.install(monkeypatch)


def write_config(path: Path, output_dir: Path, **train) -> Path:
    cfg = {**CONFIG, "output_dir": str(output_dir), "train": {**CONFIG["train"], **train}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses_by_step(output_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records}


def assert_same_state(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    assert a["scheduler"] == b["scheduler"]
    assert a["scaler"] == b["scaler"]


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_resume_mid_epoch_continues_bitwise_identically(tmp_path, amp):
    whole, split = tmp_path / "whole", tmp_path / "split"
    main.main(["--config", str(write_config(tmp_path / "a.yaml", whole, amp=amp)), "--max_steps", "6"])
    main.main(["--config", str(write_config(tmp_path / "b.yaml", split, amp=amp)), "--max_steps", "3"])
    stopped = load_checkpoint(split / "last.pth")
    assert (stopped["epoch"], stopped["step"], stopped["data_position"]) == (0, 3, 6)
    main.main(["--resume", str(split / "last.pth"), "--max_steps", "6"])

    reference, resumed = load_checkpoint(whole / "last.pth"), load_checkpoint(split / "last.pth")
    assert (reference["epoch"], reference["step"], reference["data_position"]) == (1, 6, 4)
    assert (resumed["epoch"], resumed["step"], resumed["data_position"]) == (1, 6, 4)
    assert_same_state(reference, resumed)
    assert reference["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)  # dropped after epoch 1
    assert losses_by_step(whole) == losses_by_step(split)
    assert sorted(losses_by_step(split)) == [1, 2, 3, 4, 5, 6]


def test_resume_without_restoring_the_rng_diverges(tmp_path, monkeypatch):
    """Control for the test above: dropout really draws from the restored stream."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    main.main(["--config", str(write_config(tmp_path / "a.yaml", whole)), "--max_steps", "4"])
    main.main(["--config", str(write_config(tmp_path / "b.yaml", split)), "--max_steps", "2"])
    monkeypatch.setattr(main, "restore_rng_state", lambda state: None)
    main.main(["--resume", str(split / "last.pth"), "--max_steps", "4"])
    reference, resumed = load_checkpoint(whole / "last.pth")["model"], load_checkpoint(split / "last.pth")["model"]
    assert not torch.equal(reference["proj.weight"], resumed["proj.weight"])


def test_run_writes_named_checkpoints_config_and_log(tmp_path):
    out = tmp_path / "out"
    main.main(["--config", str(write_config(tmp_path / "c.yaml", out)), "--max_steps", "5", "--seed", "11",
               "--set", "train.log_every=2"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint_epoch001.pth", "checkpoint_step0000002.pth", "checkpoint_step0000004.pth",
                     "checkpoint_step0000005.pth", "config.yaml", "last.pth", "log.jsonl", "tb"]
    assert (out / "last.pth").read_bytes() == (out / "checkpoint_step0000005.pth").read_bytes()
    epoch_end = load_checkpoint(out / "checkpoint_epoch001.pth")
    assert (epoch_end["epoch"], epoch_end["step"], epoch_end["data_position"]) == (1, 4, 0)
    saved = load_config(out / "config.yaml")
    assert saved == epoch_end["config"]
    assert saved["seed"] == 11 and saved["train"]["log_every"] == 2
    # frozen "pretrained" weights are not saved
    assert set(epoch_end["model"]) == set(trainable_state_dict(train_standins.TinyModel(0.5)))
    assert not any(key.startswith("base.") for key in epoch_end["model"])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert set(records[0]) == {"epoch", "step", "lr", "loss", "loss_pred", "loss_pred_0", "time"}
    assert records[0]["loss"] == pytest.approx(records[0]["loss_pred"] + records[0]["loss_pred_0"], rel=1e-5)


def test_param_groups_put_linear_projections_at_their_multiplier():
    model = train_standins.TinyModel(0.0)
    groups = main.param_groups(model, lr=0.1, linear_proj_mult=0.25)
    assert [g["lr"] for g in groups] == [0.1, 0.025]
    assert groups[1]["params"] == [model.reference_points.weight, model.reference_points.bias]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable
    assert id(model.base.weight) not in trainable


def test_resume_refuses_to_change_what_the_saved_state_fixes(tmp_path):
    out = tmp_path / "out"
    main.main(["--config", str(write_config(tmp_path / "c.yaml", out)), "--max_steps", "1"])
    with pytest.raises(ConfigError, match=r"train\.lr'"):
        main.main(["--resume", str(out / "last.pth"), "--lr", "0.5"])
    with pytest.raises(ConfigError, match="'seed'"):
        main.main(["--resume", str(out / "last.pth"), "--seed", "1"])


def test_resume_continues_to_the_saved_max_steps(tmp_path):
    """A run started with --max_steps and killed before it: --resume alone ends where the plan ends."""
    out = tmp_path / "out"
    main.main(["--config", str(write_config(tmp_path / "c.yaml", out)), "--max_steps", "6"])
    reference = load_checkpoint(out / "last.pth")
    assert reference["step"] == 6 and reference["config"]["train"]["max_steps"] == 6
    # checkpoint_step0000002.pth is what a kill -9 after step 3 leaves as the newest checkpoint.
    main.main(["--resume", str(out / "checkpoint_step0000002.pth"), "--output_dir", str(tmp_path / "resumed")])
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pth")
    assert (resumed["epoch"], resumed["step"], resumed["data_position"]) == (1, 6, 4)  # not on to epoch 3's end
    assert_same_state(reference, resumed)
    # A new limit on resume replaces the saved one, and is saved in turn.
    main.main(["--resume", str(tmp_path / "resumed" / "last.pth"), "--max_steps", "7"])
    extended = load_checkpoint(tmp_path / "resumed" / "last.pth")
    assert extended["step"] == 7 and extended["config"]["train"]["max_steps"] == 7


def test_resume_accepts_the_original_command_line_with_resume_appended(tmp_path):
    out = tmp_path / "out"
    original = ["--config", str(write_config(tmp_path / "c.yaml", out)), "--max_steps", "3", "--set",
                "train.log_every=2"]
    main.main(original)
    main.main(original + ["--resume", str(out / "last.pth")])  # the same config: accepted, nothing left to do
    assert load_checkpoint(out / "last.pth")["step"] == 3
    main.main(["--max_steps", "5"] + original[:2] + ["--resume", str(out / "last.pth"), "--set", "train.log_every=2",
                                                      "--max_steps", "5"])
    assert load_checkpoint(out / "last.pth")["step"] == 5
    assert sorted(losses_by_step(out)) == [2, 4]


def test_resume_refuses_a_different_config_naming_the_keys(tmp_path):
    out = tmp_path / "out"
    main.main(["--config", str(write_config(tmp_path / "c.yaml", out)), "--max_steps", "2"])
    other = write_config(tmp_path / "other.yaml", out, clip_max_norm=0.5, epochs=5)
    with pytest.raises(ConfigError, match=r"differ in \['train\.epochs', 'train\.clip_max_norm'\]"):
        main.main(["--config", str(other), "--max_steps", "2", "--resume", str(out / "last.pth")])
    # The original config without the original --max_steps resolves to a different plan: named too.
    with pytest.raises(ConfigError, match=r"differ in \['train\.max_steps'\]"):
        main.main(["--config", str(tmp_path / "c.yaml"), "--resume", str(out / "last.pth")])
    assert load_checkpoint(out / "last.pth")["step"] == 2  # nothing was trained


def test_non_finite_loss_stops_naming_the_step_and_terms(tmp_path, monkeypatch):
    class NaNAtThirdCall(train_standins.TinyCriterion):
        calls = 0

        def forward(self, outputs, targets):
            losses = super().forward(outputs, targets)
            NaNAtThirdCall.calls += 1
            if NaNAtThirdCall.calls == 3:
                losses["loss_pred_0"] = losses["loss_pred_0"] * float("nan")
            return losses

    monkeypatch.setattr(main, "build_model", lambda cfg: (train_standins.TinyModel(0.0), NaNAtThirdCall()))
    out = tmp_path / "out"
    with pytest.raises(FloatingPointError, match=r"optimizer step 3 \(epoch 0\): loss=nan, loss_pred=[0-9.]+, "
                                                 r"loss_pred_0=nan"):
        main.main(["--config", str(write_config(tmp_path / "c.yaml", out))])
    assert load_checkpoint(out / "last.pth")["step"] == 2


def test_eval_hands_the_loaded_model_to_run_evaluation(tmp_path, monkeypatch):
    out = tmp_path / "out"
    main.main(["--config", str(write_config(tmp_path / "c.yaml", out)), "--max_steps", "2"])
    calls = []
    evaluate = types.ModuleType("evaluate")
    evaluate.run_evaluation = lambda model, cfg, args: calls.append((model, cfg, args))
    monkeypatch.setitem(sys.modules, "evaluate", evaluate)
    main.main(["--eval", "--resume", str(out / "last.pth"), "--output_dir", str(tmp_path / "eval")])
    (model, cfg, args), = calls
    assert not model.training
    saved = load_checkpoint(out / "last.pth")["model"]
    assert all(torch.equal(value, saved[key]) for key, value in trainable_state_dict(model).items())
    assert cfg["output_dir"] == str(tmp_path / "eval") and args.eval


def test_cli_explains_every_flag_and_needs_one_of_config_or_resume(capsys):
    parser = main.build_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {"--config", "--data_root", "--weights", "--output_dir", "--epochs", "--max_steps", "--batch_size",
            "--lr", "--device", "--amp", "--seed", "--checkpoint_every", "--resume", "--eval", "--num_workers",
            "--set"} <= flags
    assert_help_explains_every_flag(parser, capsys)
    with pytest.raises(SystemExit):
        main.main([])
    assert "give --config (a new run" in capsys.readouterr().err
