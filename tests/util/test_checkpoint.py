"""Trainable-subset weights, strict loading, RNG capture, atomic writes and weights_only loading
(util/checkpoint.py)."""
import random

import numpy as np
import pytest
import torch
from torch import nn

import util.checkpoint as checkpoint_module
from util.checkpoint import (LAST, CheckpointError, build_checkpoint, capture_rng_state, load_checkpoint,
                             load_model_weights, restore_rng_state, save_checkpoint, trainable_state_dict)


class Net(nn.Module):
    """A frozen 'pretrained' part next to trainable layers with buffers."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.frozen = nn.Sequential(nn.Linear(3, width), nn.BatchNorm1d(width)).requires_grad_(False)
        self.trained = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)
        self.norm.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.head = nn.Linear(width, 1)
        self.head.bias.requires_grad_(False)  # a partly frozen module: its trainable weight still counts


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.trained(self.frozen(x))))


# Not the frozen part's weights or BatchNorm statistics, the frozen head.bias or the non-persistent buffer.
TRAINABLE_KEYS = {"trained.weight", "trained.bias", "norm.weight", "norm.bias", "norm.running_mean",
                  "norm.running_var", "norm.num_batches_tracked", "head.weight"}


def test_trainable_state_dict_holds_trainable_params_and_their_modules_buffers():
    state = trainable_state_dict(Net())
    assert set(state) == TRAINABLE_KEYS
    assert all(not value.requires_grad and value.device.type == "cpu" for value in state.values())


def test_load_model_weights_round_trip_touches_only_the_trainable_subset():
    torch.manual_seed(0)
    source, target = Net(), Net()
    frozen_before = target.frozen[0].weight.clone()
    load_model_weights(target, trainable_state_dict(source))
    for key, value in trainable_state_dict(source).items():
        assert torch.equal(target.state_dict()[key], value), key
    assert torch.equal(target.frozen[0].weight, frozen_before)
    assert not torch.equal(target.frozen[0].weight, source.frozen[0].weight)


def test_strict_loading_lists_missing_unexpected_and_misshaped_keys_in_one_error():
    model = Net()
    state = trainable_state_dict(model)
    del state["trained.bias"]
    state["frozen.0.weight"] = torch.zeros(4, 3)
    state["extra.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(1, 5)
    before = model.head.weight.clone()
    with pytest.raises(CheckpointError) as error:
        load_model_weights(model, state)
    message = str(error.value)
    assert "missing from the checkpoint (1):\n    trained.bias" in message
    assert "unexpected (not trainable in this model) (2):\n    extra.weight\n    frozen.0.weight" in message
    assert "head.weight: checkpoint (1, 5), model (1, 4)" in message
    assert torch.equal(model.head.weight, before)  # nothing loaded


def make_checkpoint(model: nn.Module, config: dict) -> dict:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 4], gamma=0.1)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    return build_checkpoint(model, optimizer, scheduler, scaler, epoch=1, step=7, data_position=4,
                            rng=[capture_rng_state(), capture_rng_state()], config=config)


def test_checkpoint_loads_with_weights_only_and_last_is_a_copy(tmp_path):
    config = {"seed": 3, "train": {"lr": 1e-3, "lr_drop": [2, 4]}, "output_dir": str(tmp_path)}
    state = make_checkpoint(Net(), config)
    path = save_checkpoint(state, tmp_path, "checkpoint_step0000007.pth")
    assert path == tmp_path / "checkpoint_step0000007.pth"
    assert (tmp_path / LAST).read_bytes() == path.read_bytes()
    assert not (tmp_path / LAST).is_symlink()
    loaded = load_checkpoint(path)  # torch.load(..., weights_only=True)
    assert (loaded["epoch"], loaded["step"], loaded["data_position"], loaded["config"]) == (1, 7, 4, config)
    assert loaded["scheduler"]["last_epoch"] == 1
    assert loaded["scaler"]["scale"] == 128.0
    assert loaded["optimizer"]["state"][0]["step"] == 1
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    restore_rng_state(loaded["rng"][1])


def test_failed_save_keeps_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    first = make_checkpoint(Net(), {"seed": 1})
    save_checkpoint(first, tmp_path, "checkpoint_epoch001.pth")
    names_before = sorted(p.name for p in tmp_path.iterdir())
    bytes_before = (tmp_path / "checkpoint_epoch001.pth").read_bytes()

    def failing_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(make_checkpoint(Net(), {"seed": 2}), tmp_path, "checkpoint_epoch001.pth")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == names_before  # no temp file left
    assert (tmp_path / "checkpoint_epoch001.pth").read_bytes() == bytes_before
    assert load_checkpoint(tmp_path / LAST)["config"] == {"seed": 1}


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    torch.manual_seed(3)
    state = capture_rng_state()
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    torch.save(state, tmp_path / "rng.pth")
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    again = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    assert again[0] == expected[0] and again[1] == expected[1] and torch.equal(again[2], expected[2])


def test_load_checkpoint_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")
    torch.save({"model": {}}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match=r"lacks \['optimizer'"):
        load_checkpoint(tmp_path / "weights.pth")
