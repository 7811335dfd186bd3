"""The schema of an experiment config: every key, its type and, where one makes sense, its default.

A config stays a plain nested ``dict`` for the code (``cfg["train"]["lr"]``); the dataclasses below only describe
it. ``validate(raw, source)`` checks a dict against them and returns the complete config: every key present, in
the order of the fields below, a key the dict lacks taking its field's default. Unknown keys, keys without a default
that the dict lacks and values of the wrong type are reported together as one ``ConfigError`` naming each key and
where it came from (``source``, or the file or flag that set it).

Defaults live here only: the code reads every key with plain ``cfg[...]``. A key without a default must be in
the YAML. The defaults are the behaviour of runs saved before the key existed (``model.pixel_referring``:
False, ``data.sentences_per_clip``: 1, ``loss.focal_gamma``: 2.0, ...), so an old checkpoint's config, which
lacks them, is completed by the same validation (``util.config.upgrade_saved_config``). Keys that were read
nowhere and have been dropped (``REMOVED_KEYS``) are discarded when an old config holds them.

Types: ``int``, ``float`` (an integer is accepted and stored as a float; so is YAML 1.1's dot-less ``1e-4``,
which it reads as a string), ``bool``, ``str``, ``list[int]``, ``Optional[...]`` (null allowed), ``Literal[...]``
(one of the listed strings) and a nested dataclass (a section).
"""
import dataclasses
import re
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Literal, Optional

from util.errors import UserInputError

# Keys that every shipped config held and no code read; dropped when an old config (a checkpoint's) has them.
REMOVED_KEYS = ("model.with_box_refine",)

_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(UserInputError):
    """A config file or an override that does not fit the config's keys (``util.config`` exports it)."""


@dataclass
class BackboneConfig:
    out_channels: list[int]        # projections of the U-paired UNet taps at strides 8, 16, 32
    tcmr_channels: int             # stride-4 temporal feature of TCMR
    unet_lora_rank: int            # 0 freezes the UNet fully
    unet_lora_alpha: int
    unet_lora_dropout: float
    clip_image_size: int
    sample_posterior: bool         # the paper's code samples the VAE posterior; we take its mean
    gradient_checkpointing: bool
    frozen_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the frozen VAE/CLIP on GPU


@dataclass
class TextConfig:
    max_length: int                # RoBERTa tokens kept


@dataclass
class ModelConfig:
    hidden_dim: int
    num_queries: int
    enc_layers: int
    dec_layers: int
    dim_feedforward: int
    nheads: int
    dropout: float
    enc_n_points: int
    dec_n_points: int
    num_feature_levels: int
    aux_loss: bool
    controller_layers: int
    dynamic_mask_channels: int     # width of the mask head's branches (models/mask_head.py)
    rel_coord: bool
    vl_fusion: bool
    backbone: BackboneConfig
    text: TextConfig
    pixel_referring: bool = False  # auxiliary text-to-pixel head and loss (models/pixel_referring.py)
    text_alignment: bool = False   # slot-word alignment added to the class logits (models/text_alignment.py)
    object_referring: bool = False  # words against each slot's masked memory and box (models/object_referring.py)
    sentence_queries: bool = False  # the sentence as every slot's content query (models/sentence_queries.py)


@dataclass
class MatcherConfig:
    cost_class: float
    cost_bbox: float
    cost_giou: float
    cost_mask: float
    cost_dice: float


@dataclass
class LossConfig:
    cls: float
    bbox: float
    giou: float
    mask: float
    dice: float
    focal_alpha: float
    focal_gamma: float = 2.0
    boxes_on_invalid_frames: bool = False  # true: the paper's L1/GIoU against zero boxes on frames without it
    pixel_referring: float = 2.0           # BCE of the text-to-pixel logits (with model.pixel_referring)
    pixel_referring_dice: float = 5.0      # their dice loss


@dataclass
class TrainConfig:
    epochs: int
    lr: float
    lr_linear_proj_mult: float     # reference_points / sampling_offsets
    weight_decay: float
    clip_max_norm: float
    lr_drop: list[int]
    batch_size: int                # clips per process and step
    num_workers: int
    amp: Literal["none", "bf16", "fp16"]
    checkpoint_every: int
    log_every: int
    max_steps: Optional[int] = None  # optimizer steps in all (main.py --max_steps); null: all epochs
    # CPU threads, fixed for the whole run and recorded in its checkpoints (util/cpu_threads.py); null: the resumed
    # run's count, else the cores free when the run starts. Runs saved before these keys followed the load all along;
    # resumed, they keep one count (their resume was not bit-exact before either).
    cpu_threads: Optional[int] = None
    adaptive_threads: bool = False   # follow the cores other processes leave free; resume is then not bit-exact


@dataclass
class DataConfig:
    num_frames: int
    max_skip: int
    reverse_prob: float
    train_scales: list[int]
    max_size: int
    test_size: int
    size_divisibility: int
    sentences_per_clip: int = 1    # expressions of a video trained on the same clip in one step
    # RefCOCO-family pseudo-videos (datasets/refcoco.py; dataset refcoco, or ytvos_refcoco mixed with Ref-YTVOS)
    refcoco_sets: Optional[list[str]] = None  # the jsons read; null: refcoco, refcoco+, refcocog
    refcoco_root: str = "data/coco"           # ytvos_refcoco: the RefCOCO root (data_root is Ref-YTVOS's)
    refcoco_fraction: float = 0.5             # ytvos_refcoco: share of RefCOCO pseudo-clips in every epoch
    affine_degrees: float = 10.0              # per-frame warp of a pseudo-clip: rotation in +-degrees,
    affine_translate: float = 0.1             # translation in +- this fraction of the image side,
    affine_scale: float = 0.1                 # scale in 1 +- this,
    affine_shear: float = 5.0                 # horizontal shear in +-degrees


@dataclass
class InferenceConfig:
    threshold: float
    clip_len: int


@dataclass
class ExperimentConfig:
    dataset: str
    data_root: str
    weights: str                   # folder of the pretrained components
    seed: int
    output_dir: str
    model: ModelConfig
    matcher: MatcherConfig
    loss: LossConfig
    train: TrainConfig
    data: DataConfig
    inference: InferenceConfig


def defaults(schema=ExperimentConfig, prefix: str = "") -> dict:
    """Every dotted key of ``schema`` that has a default -> that default."""
    found = {}
    for item in dataclasses.fields(schema):
        if dataclasses.is_dataclass(item.type):
            found.update(defaults(item.type, f"{prefix}{item.name}."))
        elif item.default is not MISSING:
            found[prefix + item.name] = item.default
    return found


def keys(schema=ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of ``schema``, in order."""
    found = []
    for item in dataclasses.fields(schema):
        if dataclasses.is_dataclass(item.type):
            found += keys(item.type, f"{prefix}{item.name}.")
        else:
            found.append(prefix + item.name)
    return found


def type_name(hint) -> str:
    """``list[int]`` -> "a list of int", ``Optional[int]`` -> "int or null", ``Literal["a", "b"]`` -> "one of ..."."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is list:
        return f"a list of {type_name(args[0])}"
    if dataclasses.is_dataclass(hint):
        return "a section (mapping)"
    return hint.__name__


_NO = object()  # a value that does not fit


def convert(value, hint):
    """``value`` as the type ``hint`` stores it, or ``_NO``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value if isinstance(value, str) and value in args else _NO
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _NO
        for arg in args:
            if arg is not type(None) and (converted := convert(value, arg)) is not _NO:
                return converted
        return _NO
    if origin is list:
        if not isinstance(value, list):
            return _NO
        items = [convert(item, args[0]) for item in value]
        return _NO if any(item is _NO for item in items) else items
    if hint is bool:
        return value if isinstance(value, bool) else _NO
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if hint is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NO
    if hint is str:
        return value if isinstance(value, str) else _NO
    raise TypeError(f"config schema: unsupported type {hint!r}")


def _check(raw: dict, schema, prefix: str, where, problems: list[str]) -> dict:
    complete = {}
    names = {item.name for item in dataclasses.fields(schema)}
    for key in raw:
        if key not in names:
            problems.append(f"unknown key {prefix + str(key)!r}{where(prefix + str(key))}; keys of "
                            f"{prefix.rstrip('.') or 'the top level'}: {sorted(names)}")
    for item in dataclasses.fields(schema):
        key = prefix + item.name
        if item.name not in raw:
            if dataclasses.is_dataclass(item.type):
                required = [k for k in keys(item.type, key + ".") if k not in defaults(item.type, key + ".")]
                problems.append(f"missing section {key!r}{where(key)}: it needs the keys {required}")
            elif item.default is MISSING:
                problems.append(f"missing key {key!r}{where(key)}: it has no default; give it a value "
                                f"({type_name(item.type)})")
            else:
                complete[item.name] = item.default
            continue
        value = raw[item.name]
        if dataclasses.is_dataclass(item.type):
            if isinstance(value, dict):
                complete[item.name] = _check(value, item.type, key + ".", where, problems)
            else:
                problems.append(f"{key!r}{where(key)} must be a section (a mapping of "
                                f"{[f.name for f in dataclasses.fields(item.type)]}), got {value!r}")
            continue
        converted = convert(value, item.type)
        if converted is _NO:
            problems.append(f"{key!r}{where(key)} must be {type_name(item.type)}, got {value!r} "
                            f"({type(value).__name__})")
        else:
            complete[item.name] = converted
    return complete


def validate(raw: dict, source: str, origins: dict[str, str] | None = None, schema=ExperimentConfig) -> dict:
    """The complete config of ``raw`` (a new dict: defaults filled in, ``REMOVED_KEYS`` dropped).

    source: where ``raw`` comes from (e.g. "config file configs/x.yaml"), named in the error;
    origins: dotted key -> where that key was set, when it differs from ``source`` (a base file, a flag).
    Raises ``ConfigError`` listing every unknown, missing and mistyped key.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping of config keys, got {type(raw).__name__}")
    origins = origins or {}

    def where(key: str) -> str:
        """The note on where ``key`` (or its section) was set, e.g. ' (set in configs/base/loss.yaml)'; empty
        when it comes from ``source`` itself."""
        parts = key.split(".")
        for depth in range(len(parts), 0, -1):
            if ".".join(parts[:depth]) in origins:
                return f" ({origins['.'.join(parts[:depth])]})"
        return ""

    raw = _without_removed_keys(raw)
    problems: list[str] = []
    complete = _check(raw, schema, "", where, problems)
    if problems:
        raise ConfigError(f"{source} does not fit the config schema (util/config_schema.py):\n  "
                          + "\n  ".join(problems))
    return complete


def _without_removed_keys(raw: dict) -> dict:
    raw = dict(raw)
    for key in REMOVED_KEYS:
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            if not isinstance(node.get(part), dict):
                break
            node[part] = dict(node[part])  # copy on the way down: the caller's dict is left alone
            node = node[part]
        else:
            node.pop(leaf, None)
    return raw
