"""YAML defaults, flag overrides, --set assignments and the saved resolved config (util/config.py)."""
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from util.config import ConfigError, apply_overrides, get_key, load_config, save_config, upgrade_saved_config

REPO = Path(__file__).resolve().parents[2]


def flags(**given) -> Namespace:
    """An argparse namespace as main.py builds it: every dedicated flag None unless given."""
    names = ("data_root", "weights", "output_dir", "seed", "epochs", "batch_size", "lr", "amp",
             "checkpoint_every", "num_workers", "set")
    return Namespace(**{name: given.get(name) for name in names})


@pytest.fixture
def cfg() -> dict:
    return load_config(REPO / "configs" / "ytvos_hcd.yaml")


def test_yaml_gives_the_defaults(cfg):
    assert cfg["train"]["lr"] == pytest.approx(2e-4)
    assert cfg["train"]["lr_drop"] == [6, 8]
    assert get_key(cfg, "model.backbone.unet_lora_rank") == 16
    assert apply_overrides(cfg, flags()) == cfg


def test_missing_or_non_mapping_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_flags_override_their_keys_without_touching_the_input(cfg):
    resolved = apply_overrides(cfg, flags(lr=0.5, batch_size=3, epochs=2, amp="bf16", checkpoint_every=7,
                                          data_root="/d", weights="/w", output_dir="/o", num_workers=0))
    assert resolved["train"]["lr"] == 0.5
    assert resolved["train"]["batch_size"] == 3
    assert resolved["train"]["epochs"] == 2
    assert resolved["train"]["amp"] == "bf16"
    assert resolved["train"]["checkpoint_every"] == 7
    assert resolved["train"]["num_workers"] == 0
    assert (resolved["data_root"], resolved["weights"], resolved["output_dir"]) == ("/d", "/w", "/o")
    assert resolved["train"]["weight_decay"] == cfg["train"]["weight_decay"]
    assert cfg["train"]["lr"] == pytest.approx(2e-4)  # the input config is not modified


def test_flags_may_add_keys_the_yaml_omits():
    assert apply_overrides({"train": {"lr": 0.1}}, flags(seed=3, epochs=2)) == {"train": {"lr": 0.1, "epochs": 2},
                                                                             "seed": 3}


def test_set_parses_values_as_yaml_and_wins_over_flags(cfg):
    resolved = apply_overrides(cfg, flags(lr=0.5, set=[
        "train.lr_drop=[3, 5]", "model.backbone.unet_lora_rank=0", "model.vl_fusion=true", "train.lr=1e-3",
        "dataset=refshapes"]))
    assert resolved["train"]["lr_drop"] == [3, 5]
    assert resolved["model"]["backbone"]["unet_lora_rank"] == 0
    assert resolved["model"]["vl_fusion"] is True
    assert resolved["train"]["lr"] == pytest.approx(1e-3)
    assert resolved["dataset"] == "refshapes"


@pytest.mark.parametrize("assignment, message", [
    ("train.lrr=1", r"'lrr'.*'lr'"),                    # typo: names the known keys
    ("trian.lr=1", r"<top level> has no 'trian'"),
    ("model.backbone.rank=1", r"model\.backbone has no 'rank'"),
    ("train=3", r"section"),
    ("train.lr.x=3", r"no key"),
    ("train.lr", r"key\.sub=value"),
    ("train.lr=[1,", r"not valid YAML"),
])
def test_set_rejects_unknown_keys_and_bad_syntax(cfg, assignment, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(cfg, flags(set=[assignment]))


def test_saved_config_round_trips_and_leaves_no_temp_file(cfg, tmp_path):
    resolved = apply_overrides(cfg, flags(seed=5, set=["train.lr_drop=[1]"]))
    path = tmp_path / "run" / "config.yaml"
    save_config(resolved, path)
    assert load_config(path) == resolved
    assert yaml.safe_load(path.read_text())["seed"] == 5
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]


def test_saved_configs_get_the_keys_added_since_with_their_old_behaviour():
    old = {"model": {"hidden_dim": 64, "vl_fusion": True}, "data": {"num_frames": 4}}
    upgraded = upgrade_saved_config(old)
    assert upgraded["model"] == {"hidden_dim": 64, "vl_fusion": True, "pixel_referring": False}
    assert upgraded["data"] == {"num_frames": 4, "sentences_per_clip": 1}
    assert "pixel_referring" not in old["model"]  # the input is left alone
    newer = {"model": {"pixel_referring": True}, "data": {"sentences_per_clip": 3}}
    assert upgrade_saved_config(newer) == newer  # present keys are kept
