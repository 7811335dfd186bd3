"""Experiment configuration: a YAML file gives the defaults, command-line flags override single keys.

A config is a plain nested ``dict`` (``cfg["train"]["lr"]``). Keys are addressed by dotted paths
(``"train.lr"``). ``FLAG_TO_KEY`` lists the dedicated flags of ``main.py`` and the key each one sets;
``--set key.sub=value`` sets any other existing key, the value parsed as YAML (``--set
train.lr_drop=[3,5]``). The resolved config is saved as ``config.yaml`` beside the checkpoints.
"""
import copy
import re
from pathlib import Path

import yaml

from util.atomic_write import atomic_write

# Dedicated flag (argparse dest) -> dotted config key. A flag left at None keeps the config's value.
FLAG_TO_KEY = {
    "data_root": "data_root",
    "weights": "weights",
    "output_dir": "output_dir",
    "seed": "seed",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "amp": "train.amp",
    "checkpoint_every": "train.checkpoint_every",
    "num_workers": "train.num_workers",
}

_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A config file or an override that does not fit the config's keys."""


def load_config(path: str | Path) -> dict:
    """The config stored in the YAML file ``path`` (a mapping at the top level)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; pick one of configs/*.yaml")
    with path.open() as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path} must hold a YAML mapping at the top level, got {type(cfg).__name__}")
    return cfg


# Keys added after runs were saved, with the value that reproduces those runs: a saved config without one of them
# (a checkpoint's or a save_pretrained folder's) is read as if it had it.
ADDED_KEYS = {"model.pixel_referring": False, "data.sentences_per_clip": 1}


def upgrade_saved_config(cfg: dict) -> dict:
    """A copy of a saved run's config with every missing ``ADDED_KEYS`` entry set to its old behaviour."""
    upgraded = copy.deepcopy(cfg)
    for key, value in ADDED_KEYS.items():
        try:
            get_key(upgraded, key)
        except ConfigError:
            set_key(upgraded, key, value, create=True)
    return upgraded


def get_key(cfg: dict, key: str):
    """The value at dotted ``key`` (``"train.lr"``); ``ConfigError`` naming the missing part otherwise."""
    node = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:depth]) or "<top level>"
            known = sorted(node) if isinstance(node, dict) else []
            raise ConfigError(f"config has no key {key!r}: {where} has no {part!r} (keys there: {known})")
        node = node[part]
    return node


def set_key(cfg: dict, key: str, value, create: bool = False) -> None:
    """Set dotted ``key`` to ``value`` in place. The key must exist unless ``create``; a section cannot be
    replaced by a plain value."""
    if not create:
        current = get_key(cfg, key)
        if isinstance(current, dict) and not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} is a section ({sorted(current)}); set one of its keys instead")
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {key!r}: {part!r} holds a value, not a section")
    node[leaf] = value


def parse_assignment(text: str) -> tuple[str, object]:
    """``"train.lr_drop=[3, 5]"`` -> ``("train.lr_drop", [3, 5])``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.sub=value, got {text!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({error})") from error
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
        value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
    return key.strip(), value


def apply_overrides(cfg: dict, args) -> dict:
    """A copy of ``cfg`` with the dedicated flags of ``args`` (``FLAG_TO_KEY``; None = not given) and then
    its ``--set`` assignments (``args.set``: list of ``key=value`` or None) applied.

    Dedicated flags may add their key when the YAML omits it; ``--set`` only changes existing keys, so a
    typo is an error rather than a silently ignored setting.
    """
    cfg = copy.deepcopy(cfg)
    for flag, key in FLAG_TO_KEY.items():
        value = getattr(args, flag, None)
        if value is not None:
            set_key(cfg, key, value, create=True)
    for assignment in getattr(args, "set", None) or []:
        key, value = parse_assignment(assignment)
        set_key(cfg, key, value)
    return cfg


def save_config(cfg: dict, path: str | Path) -> None:
    """Write ``cfg`` as YAML to ``path`` atomically (its folder is created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg, sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))
