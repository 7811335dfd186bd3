"""YAML configs that compose, the schema check, flag overrides, --set assignments and the saved resolved config
(util/config.py, util/config_schema.py)."""
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from util.config import ConfigError, apply_overrides, get_key, load_config, save_config, upgrade_saved_config
from util.config_schema import defaults, keys

REPO = Path(__file__).resolve().parents[2]


def flags(**given) -> Namespace:
    """An argparse namespace as main.py builds it: every dedicated flag None unless given."""
    names = ("data_root", "weights", "output_dir", "seed", "epochs", "batch_size", "lr", "amp",
             "checkpoint_every", "num_workers", "max_steps", "set")
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


def test_max_steps_is_a_config_key_set_by_its_flag(cfg):
    assert cfg["train"]["max_steps"] is None  # the schema's default: all epochs
    assert apply_overrides(cfg, flags(max_steps=12))["train"]["max_steps"] == 12


def test_set_parses_values_as_yaml_and_wins_over_flags(cfg):
    resolved = apply_overrides(cfg, flags(lr=0.5, set=[
        "train.lr_drop=[3, 5]", "model.backbone.unet_lora_rank=0", "model.vl_fusion=true", "train.lr=1e-3",
        "dataset=refshapes"]))
    assert resolved["train"]["lr_drop"] == [3, 5]
    assert resolved["model"]["backbone"]["unet_lora_rank"] == 0
    assert resolved["model"]["vl_fusion"] is True
    assert resolved["train"]["lr"] == pytest.approx(1e-3)
    assert resolved["dataset"] == "refshapes"
    # a string key keeps a value that merely looks like a number; only float keys read "1e5" as one
    assert apply_overrides(cfg, flags(set=["data_root=1e5"]))["data_root"] == "1e5"


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


def saved_run_config() -> dict:
    """A config as an old checkpoint holds it: complete then, without the keys added since."""
    old = yaml.safe_load(yaml.safe_dump(load_config(REPO / "configs" / "refshapes_tiny.yaml")))
    for section, key in (("model", "pixel_referring"), ("data", "sentences_per_clip"), ("loss", "focal_gamma"),
                         ("loss", "boxes_on_invalid_frames"), ("loss", "pixel_referring"),
                         ("loss", "pixel_referring_dice"), ("train", "max_steps")):
        del old[section][key]
    del old["model"]["backbone"]["frozen_dtype"]
    old["model"]["with_box_refine"] = True  # in every config once, read nowhere
    return old


def test_saved_configs_get_the_keys_added_since_with_their_old_behaviour():
    old = saved_run_config()
    upgraded = upgrade_saved_config(old)
    assert upgraded["model"]["pixel_referring"] is False
    assert upgraded["data"]["sentences_per_clip"] == 1
    assert upgraded["loss"]["focal_gamma"] == 2.0 and upgraded["loss"]["boxes_on_invalid_frames"] is False
    assert upgraded["model"]["backbone"]["frozen_dtype"] == "float32"
    assert upgraded["train"]["max_steps"] is None
    assert "with_box_refine" not in upgraded["model"]  # the removed key is dropped
    assert "pixel_referring" not in old["model"] and "with_box_refine" in old["model"]  # the input is left alone
    newer = upgrade_saved_config(old)
    newer["model"]["pixel_referring"], newer["data"]["sentences_per_clip"] = True, 3
    assert upgrade_saved_config(newer) == newer  # present keys are kept


def test_the_resolved_configs_are_complete_and_standalone(tmp_path):
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        flat = []
        stack = [("", cfg)]
        while stack:
            prefix, node = stack.pop()
            for key, value in node.items():
                (stack.append((f"{prefix}{key}.", value)) if isinstance(value, dict) else flat.append(prefix + key))
        assert sorted(flat) == sorted(keys()), path.name  # every key, no _base_
        save_config(cfg, tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml") == cfg  # the saved copy needs no base file


def test_experiment_configs_compose_the_base_files_and_differ_only_where_expected():
    ytvos, a2d, davis, mevis = (load_config(REPO / "configs" / f"{name}_hcd.yaml")
                                for name in ("ytvos", "a2d", "davis", "mevis"))
    tiny, tiny_mevis = (load_config(REPO / "configs" / f"{name}.yaml")
                        for name in ("refshapes_tiny", "refshapes_mevis_tiny"))

    def differences(a: dict, b: dict, prefix: str = "") -> set[str]:
        found = set()
        for key in a:
            if isinstance(a[key], dict):
                found |= differences(a[key], b[key], f"{prefix}{key}.")
            elif a[key] != b[key]:
                found.add(prefix + key)
        return found

    experiment = {"dataset", "data_root", "output_dir"}
    assert differences(ytvos, a2d) == experiment | {"train.epochs", "train.lr", "train.lr_drop", "train.batch_size"}
    assert differences(ytvos, davis) == experiment | {"train.epochs", "train.lr", "train.batch_size"}
    assert differences(ytvos, mevis) == experiment | {"data.reverse_prob"}
    assert differences(tiny, tiny_mevis) == experiment
    assert (a2d["train"]["lr"], a2d["train"]["lr_drop"], davis["train"]["lr"]) == (1e-4, [3, 5], 2.5e-5)
    assert mevis["data"]["reverse_prob"] == 0.0 and davis["train"]["lr_drop"] == ytvos["train"]["lr_drop"]
    assert tiny["model"]["hidden_dim"] == 64 and ytvos["model"]["hidden_dim"] == 256
    assert tiny["weights"] == "weight_tiny" and ytvos["weights"] == "weight"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_files_merge_in_order_and_the_file_overrides_single_keys(tmp_path):
    write(tmp_path / "base" / "one.yaml", "seed: 1\ntrain:\n  lr: 0.1\n  lr_drop: [1, 2]\n")
    write(tmp_path / "base" / "two.yaml", "seed: 2\ntrain:\n  epochs: 3\n")
    paper = yaml.safe_dump(load_config(REPO / "configs" / "refshapes_tiny.yaml"))
    write(tmp_path / "base" / "all.yaml", paper)
    cfg = load_config(write(tmp_path / "x.yaml", "_base_: [base/all.yaml, base/one.yaml, base/two.yaml]\n"
                                                   "train:\n  lr_drop: [5]\n"))
    assert cfg["seed"] == 2 and cfg["train"]["epochs"] == 3 and cfg["train"]["lr"] == 0.1
    assert cfg["train"]["lr_drop"] == [5]  # a list is replaced, not merged
    assert cfg["train"]["batch_size"] == 2  # the rest of the section comes from all.yaml
    assert "_base_" not in cfg
    write(tmp_path / "loop.yaml", "_base_: [loop.yaml]\n")
    with pytest.raises(ConfigError, match="include it again"):
        load_config(tmp_path / "loop.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(write(tmp_path / "y.yaml", "_base_: [nope.yaml]\n"))


def test_an_unknown_key_is_an_error_naming_the_key_and_its_file(tmp_path):
    paper = yaml.safe_load(yaml.safe_dump(load_config(REPO / "configs" / "ytvos_hcd.yaml")))
    paper["model"]["hiden_dim"] = 3
    path = write(tmp_path / "typo.yaml", yaml.safe_dump(paper))
    with pytest.raises(ConfigError, match=r"unknown key 'model\.hiden_dim'") as error:
        load_config(path)
    assert str(path) in str(error.value) and "hidden_dim" in str(error.value)  # the file, and the known keys
    # In a base file: the error names the base file that set it.
    write(tmp_path / "base.yaml", "train:\n  lr_dorp: [1]\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lr_dorp' \(set in .*base\.yaml\)"):
        load_config(write(tmp_path / "child.yaml", "_base_: [typo.yaml, base.yaml]\nmodel:\n  hidden_dim: 8\n"))


def test_broken_yaml_and_a_missing_base_name_the_files(tmp_path):
    broken = write(tmp_path / "broken.yaml", "train:\n  lr: [1e-4\n")
    with pytest.raises(ConfigError, match=rf"config file {broken} is not valid YAML"):
        load_config(broken)
    child = write(tmp_path / "child.yaml", "_base_: [gone.yaml]\n")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'gone.yaml'}, listed in _base_ of {child}, does not"):
        load_config(child)


def test_a_missing_key_without_default_is_an_error_naming_it_and_the_file(tmp_path):
    paper = yaml.safe_load(yaml.safe_dump(load_config(REPO / "configs" / "ytvos_hcd.yaml")))
    del paper["train"]["lr"], paper["seed"]
    path = write(tmp_path / "short.yaml", yaml.safe_dump(paper))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"config file {path} does not fit the config schema")
    assert "missing key 'train.lr'" in message and "missing key 'seed'" in message  # both, in one error
    assert "max_steps" not in message  # a key with a default is not missing


@pytest.mark.parametrize("key, value, message", [
    ("train.lr", "fast", r"'train\.lr' must be float, got 'fast' \(str\)"),
    ("train.epochs", 2.5, r"'train\.epochs' must be int, got 2\.5"),
    ("train.amp", "fp8", r"'train\.amp' must be one of 'none', 'bf16', 'fp16'"),
    ("model.aux_loss", "yes please", r"'model\.aux_loss' must be bool"),
    ("train.lr_drop", [1, "x"], r"'train\.lr_drop' must be a list of int"),
    ("model.backbone", 3, r"'model\.backbone' must be a section"),
])
def test_a_mistyped_value_is_an_error_naming_the_key_and_the_file(tmp_path, key, value, message):
    paper = yaml.safe_load(yaml.safe_dump(load_config(REPO / "configs" / "ytvos_hcd.yaml")))
    *parents, leaf = key.split(".")
    node = paper
    for part in parents:
        node = node[part]
    node[leaf] = value
    path = write(tmp_path / "typed.yaml", yaml.safe_dump(paper))
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_values_are_stored_as_their_type(tmp_path):
    paper = yaml.safe_load(yaml.safe_dump(load_config(REPO / "configs" / "ytvos_hcd.yaml")))
    paper["train"]["lr"], paper["model"]["dropout"] = "1e-4", 0  # YAML 1.1 reads a dot-less 1e-4 as a string
    cfg = load_config(write(tmp_path / "typed.yaml", yaml.safe_dump(paper)))
    assert cfg["train"]["lr"] == 1e-4 and isinstance(cfg["model"]["dropout"], float)


def test_a_mistyped_override_is_an_error_naming_the_flag(cfg):
    with pytest.raises(ConfigError, match=r"'train\.epochs' \(set by --set train\.epochs=two\) must be int"):
        apply_overrides(cfg, flags(set=["train.epochs=two"]))
    with pytest.raises(ConfigError, match=r"'train\.amp' \(set by --amp\) must be one of"):
        apply_overrides(cfg, flags(amp="fp8"))


def test_defaults_are_the_behaviour_before_their_key_existed():
    assert defaults() == {"model.backbone.frozen_dtype": "float32", "model.pixel_referring": False,
                          "model.text_alignment": False, "model.sentence_queries": False,
                          "model.object_referring": False,
                          "loss.focal_gamma": 2.0, "loss.boxes_on_invalid_frames": False,
                          "loss.pixel_referring": 2.0, "loss.pixel_referring_dice": 5.0, "train.max_steps": None,
                          # runs saved before them followed the load; they now keep one count (util/cpu_threads.py)
                          "train.cpu_threads": None, "train.adaptive_threads": False,
                          "data.sentences_per_clip": 1, "data.refcoco_sets": None, "data.refcoco_root": "data/coco",
                          "data.refcoco_fraction": 0.5, "data.affine_degrees": 10.0, "data.affine_translate": 0.1,
                          "data.affine_scale": 0.1, "data.affine_shear": 5.0}
