"""Starting a new run from trained weights: util.checkpoint.init_model_weights / read_init_weights, main.py
--init_from / --init_skip (on the training stand-ins)."""
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import main
from tests import train_standins
from util.checkpoint import (CheckpointError, init_model_weights, load_checkpoint, matches_pattern,
                             read_init_weights, trainable_state_dict)


class Toy(nn.Module):
    """The names that differ between configs of HCD: a query embedding (num_queries), widths (hidden_dim)."""

    def __init__(self, hidden: int = 8, queries: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.frozen = nn.Linear(3, hidden).requires_grad_(False)
        self.query_embed = nn.Embedding(queries, hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.class_embed = nn.Linear(hidden, 1)


def trained_state(**kwargs) -> dict[str, torch.Tensor]:
    model = Toy(seed=1, **kwargs)
    model.norm.running_mean.uniform_()  # a buffer of a trained module travels with it
    return trainable_state_dict(model)


def test_weights_are_restored_exactly_and_the_frozen_part_is_left_alone():
    state, model = trained_state(), Toy(seed=2)
    frozen_before = model.frozen.weight.clone()
    report = init_model_weights(model, state)
    restored = trainable_state_dict(model)
    assert restored.keys() == state.keys()
    for name in state:
        assert torch.equal(restored[name], state[name]), name
    assert torch.equal(model.frozen.weight, frozen_before)
    assert report.loaded == sorted(state) and not (report.missing or report.unexpected or report.skipped)


def test_missing_and_unexpected_names_are_reported_not_fatal():
    state, model = trained_state(), Toy(seed=2)
    fresh_bias = model.class_embed.bias.clone()
    del state["class_embed.bias"]
    state["old_head.weight"] = torch.zeros(2)
    report = init_model_weights(model, state, source="run.pth")
    assert report.missing == ["class_embed.bias"] and report.unexpected == ["old_head.weight"]
    assert torch.equal(model.class_embed.bias, fresh_bias)
    assert torch.equal(model.proj.weight, state["proj.weight"])
    summary = report.summary("run.pth")
    assert "class_embed.bias" in summary and "old_head.weight" in summary and "from run.pth" in summary


@pytest.mark.parametrize("kwargs,names", [
    ({"hidden": 16}, ["class_embed.weight", "norm.bias", "proj.weight", "query_embed.weight"]),
    ({"queries": 3}, ["query_embed.weight"]),
])
def test_other_widths_or_query_counts_fail_with_every_name_and_both_shapes(kwargs, names):
    state, model = trained_state(**kwargs), Toy(seed=2)
    before = trainable_state_dict(model)
    with pytest.raises(CheckpointError) as error:
        init_model_weights(model, state, source="ytvos.pth")
    message = str(error.value)
    for name in names:
        assert f"{name}: ytvos.pth {tuple(state[name].shape)}, model {tuple(before[name].shape)}" in message
    assert "--init_skip" in message
    assert all(torch.equal(value, before[key]) for key, value in trainable_state_dict(model).items())  # untouched


def test_init_skip_leaves_matching_parameters_fresh():
    state, model = trained_state(queries=3), Toy(seed=2)
    fresh = trainable_state_dict(model)
    report = init_model_weights(model, state, skip=["query_embed", r"class_\w+\.bias"])
    assert report.skipped == ["class_embed.bias", "query_embed.weight"]
    assert torch.equal(model.query_embed.weight, fresh["query_embed.weight"])
    assert torch.equal(model.class_embed.bias, fresh["class_embed.bias"])
    assert torch.equal(model.class_embed.weight, state["class_embed.weight"])
    with pytest.raises(CheckpointError, match="typo_head"):
        init_model_weights(Toy(), state, skip=["typo_head*"])


def test_patterns():
    assert matches_pattern("class_embed.0.weight", "class_embed")  # module prefix
    assert matches_pattern("class_embed.0.weight", "*.weight")  # glob
    assert matches_pattern("bbox_embed.2.layers.1.bias", r"bbox_embed\.\d+\.layers\.1\..*")  # regex
    assert not matches_pattern("class_embed_extra.weight", "class_embed")
    assert not matches_pattern("x.weight", "[")  # neither a glob match nor a valid regex


def test_reads_a_checkpoint_and_a_save_pretrained_folder(tmp_path):
    state = trained_state()
    torch.save({"model": state, "optimizer": {}, "scheduler": {}, "scaler": None, "epoch": 1, "step": 3,
                "data_position": 0, "rng": [], "config": {}}, tmp_path / "last.pth")
    folder = tmp_path / "pretrained"
    folder.mkdir()
    save_file(state, folder / "model.safetensors")
    for path in (tmp_path / "last.pth", folder):
        read = read_init_weights(path)
        assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        read_init_weights(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------ main.py


@pytest.fixture
def standins(monkeypatch):
    train_standins.install(monkeypatch)


@pytest.fixture
def trained_run(tmp_path, standins):
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(train_standins.tiny_config(seed=3, epochs=2, lr_drop=[1], checkpoint_every=100)))
    main.main(["--config", str(config), "--output_dir", str(tmp_path / "a"), "--max_steps", "3"])
    return config, tmp_path / "a" / "last.pth"


def test_main_init_from_starts_a_new_run_from_the_weights(tmp_path, trained_run):
    config, source = trained_run
    main.main(["--config", str(config), "--output_dir", str(tmp_path / "b"), "--init_from", str(source),
               "--max_steps", "0"])
    weights = load_checkpoint(source)["model"]
    initial = trainable_state_dict(train_standins.BUILT_MODELS[-1])
    assert all(torch.equal(initial[key], weights[key]) for key in weights)
    record = json.loads((tmp_path / "b" / "init_from.json").read_text())
    assert record["init_from"] == str(source) and record["loaded"] == sorted(weights)

    main.main(["--config", str(config), "--output_dir", str(tmp_path / "c"), "--init_from", str(source),
               "--max_steps", "1", "--init_skip", "head"])
    run = load_checkpoint(tmp_path / "c" / "last.pth")
    assert (run["epoch"], run["step"], run["data_position"]) == (0, 1, 2)  # a fresh step counter and data order
    assert all(state["step"] == 1 for state in run["optimizer"]["state"].values())  # a fresh optimizer
    assert json.loads((tmp_path / "c" / "init_from.json").read_text())["skipped"] == ["head.bias", "head.weight"]


def test_main_refuses_init_from_with_resume(tmp_path, trained_run, capsys):
    _, source = trained_run
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--resume", str(source), "--init_from", str(source)])
    assert exit_info.value.code == 2
    assert "--init_from starts a new run" in capsys.readouterr().err


def test_main_eval_refuses_init_from_weights_that_leave_parameters_random(tmp_path, trained_run, monkeypatch):
    config, source = trained_run

    def with_extra_head(cfg):
        model, criterion = train_standins.build_model(cfg)
        model.extra = nn.Linear(8, 1)  # not in the checkpoint: it would be scored untrained
        return model, criterion

    monkeypatch.setattr(main, "build_model", with_extra_head)
    with pytest.raises(CheckpointError, match=r"2 trainable tensors would stay random \(\['extra.bias', 'extra.w"):
        main.main(["--eval", "--config", str(config), "--output_dir", str(tmp_path / "e"),
                   "--init_from", str(source)])


def test_main_refuses_a_missing_init_from_before_reading_data(tmp_path, trained_run, capsys, monkeypatch):
    config, _ = trained_run
    monkeypatch.setattr(main, "build_dataset", lambda *args: pytest.fail("the dataset was read"))
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--config", str(config), "--output_dir", str(tmp_path / "e"),
                   "--init_from", str(tmp_path / "no.pth")])
    assert exit_info.value.code == 2
    assert f"--init_from {tmp_path / 'no.pth'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_main_mismatch_fails_before_writing_anything(tmp_path, trained_run, monkeypatch):
    config, source = trained_run

    def wider_head(cfg):
        model, criterion = train_standins.build_model(cfg)
        model.head = nn.Linear(8, 3)
        return model, criterion

    monkeypatch.setattr(main, "build_model", wider_head)
    with pytest.raises(CheckpointError, match=r"head.weight: .*last.pth \(2, 8\), model \(3, 8\)"):
        main.main(["--config", str(config), "--output_dir", str(tmp_path / "d"), "--init_from", str(source)])
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("script", ["dist_train_davis_hcd.sh", "dist_train_a2d_hcd.sh"])
def test_launchers_pass_init_from(script, tmp_path):
    from tests.test_launch_scripts import dry_run, flag

    (command,), _ = dry_run(script, INIT_FROM=str(tmp_path / "ytvos.pth"))
    assert flag(command, "--init_from") == str(tmp_path / "ytvos.pth") and "--config" in command
