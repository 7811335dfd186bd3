"""Experiment configuration: YAML files that compose, checked against a schema; command-line flags override keys.

A config is a plain nested ``dict`` (``cfg["train"]["lr"]``). Keys are addressed by dotted paths
(``"train.lr"``). A YAML file may start from others: ``_base_: [base/model_paper.yaml, base/loss.yaml]`` (paths
relative to the file) merges them in order, and the file's own keys then override single keys of theirs (sections
merge key by key, any other value, a list included, is replaced). ``load_config`` returns the resolved config
checked against ``util.config_schema``: complete (every key, defaults from the schema filled in), standalone (no
``_base_``); unknown, missing and mistyped keys are one ``ConfigError`` naming each key and its file.

``FLAG_TO_KEY`` lists the dedicated flags of ``main.py`` and the key each one sets; ``--set key.sub=value`` sets
any other existing key, the value parsed as YAML (``--set train.lr_drop=[3,5]``); ``apply_overrides`` checks the
result again. The resolved config is saved as ``config.yaml`` beside the checkpoints.
"""
import copy
from pathlib import Path

import yaml

from util.atomic_write import atomic_write
from util.config_schema import ConfigError, validate  # noqa: F401 (ConfigError is used from here)

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
    "adaptive_threads": "train.adaptive_threads",
    "max_steps": "train.max_steps",
}
BASE_KEY = "_base_"  # the list of files a YAML config starts from

def load_config(path: str | Path) -> dict:
    """The resolved config of the YAML file ``path``: its ``_base_`` files merged, then checked and completed
    (``util.config_schema.validate``)."""
    raw, origins = compose(Path(path))
    return validate(raw, f"config file {path}", origins)


def read_yaml(path: Path, included_by: Path | None = None) -> dict:
    """The mapping stored in the YAML file ``path`` (``included_by``: the config whose ``_base_`` lists it)."""
    if not path.is_file():
        if included_by is not None:
            raise FileNotFoundError(f"config file {path}, listed in {BASE_KEY} of {included_by}, does not exist")
        raise FileNotFoundError(f"config file {path} does not exist; pick one of configs/*.yaml")
    try:
        with path.open() as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path} must hold a YAML mapping at the top level, got {type(cfg).__name__}")
    return cfg


def compose(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """``(config, origins)`` of the YAML file ``path`` with its ``_base_`` files merged in, before any check.

    origins: dotted key -> "set in <base file>" for the keys (and sections) that came from a base file.
    """
    if path.resolve() in _chain:
        raise ConfigError(f"config file {path}: its {BASE_KEY} files include it again ({' -> '.join(map(str, _chain))})")
    own = read_yaml(path, _chain[-1] if _chain else None)
    bases = own.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"config file {path}: {BASE_KEY} must be a list of YAML files, got {bases!r}")
    merged, origins = {}, {}
    for base in bases:
        base_cfg, base_origins = compose(path.parent / base, _chain + (path.resolve(),))
        _merge(merged, base_cfg, origins, "", f"set in {path.parent / base}")
        origins.update(base_origins)
    _merge(merged, own, origins, "", None)
    return merged, origins


def _merge(into: dict, update: dict, origins: dict, prefix: str, origin: str | None) -> None:
    """Merge ``update`` into ``into`` in place (sections key by key); record each set key's ``origin``
    (None: the top file, whose keys need no note)."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origins, dotted + ".", origin)
            continue
        into[key] = copy.deepcopy(value)
        for known in [k for k in origins if k == dotted or k.startswith(dotted + ".")]:
            del origins[known]
        if origin is not None:
            origins[dotted] = origin


def upgrade_saved_config(cfg: dict, source: str = "the config saved with the checkpoint") -> dict:
    """A complete copy of a saved run's config: a key added since it was saved (one with a default in the
    schema) takes the default, which is its old behaviour; a removed key is dropped."""
    return validate(cfg, source)


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


def differing_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between the configs ``a`` and ``b`` (or that one of them lacks)."""
    changed = []
    for key in list(a) + [key for key in b if key not in a]:
        dotted = f"{prefix}{key}"
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            changed += differing_keys(a[key], b[key], dotted + ".")
        elif key not in a or key not in b or a[key] != b[key]:
            changed.append(dotted)
    return changed


def parse_assignment(text: str) -> tuple[str, object]:
    """``"train.lr_drop=[3, 5]"`` -> ``("train.lr_drop", [3, 5])``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.sub=value, got {text!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({error})") from error
    return key.strip(), value  # a float key takes YAML 1.1's dot-less "1e-3" string (util.config_schema)


def apply_overrides(cfg: dict, args) -> dict:
    """A copy of ``cfg`` with the dedicated flags of ``args`` (``FLAG_TO_KEY``; None = not given) and then
    its ``--set`` assignments (``args.set``: list of ``key=value`` or None) applied, checked against the schema
    (a mistyped value is a ``ConfigError`` naming its flag).

    ``--set`` only changes existing keys, so a typo is an error rather than a silently ignored setting.
    """
    cfg, origins = copy.deepcopy(cfg), {}
    for flag, key in FLAG_TO_KEY.items():
        value = getattr(args, flag, None)
        if value is not None:
            set_key(cfg, key, value, create=True)
            origins[key] = f"set by --{flag}"
    for assignment in getattr(args, "set", None) or []:
        key, value = parse_assignment(assignment)
        set_key(cfg, key, value)
        origins[key] = f"set by --set {assignment}"
    return validate(cfg, "the config with the command line's overrides", origins)


def save_config(cfg: dict, path: str | Path) -> None:
    """Write ``cfg`` as YAML to ``path`` atomically (its folder is created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg, sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))
