"""Training checkpoints: what they hold, how they are written and how they are loaded back.

A checkpoint is a ``.pth`` dict (``CHECKPOINT_KEYS``):

- ``model``: the *trainable* weights only: parameters with ``requires_grad`` and the persistent buffers of
  the modules that own such a parameter (BatchNorm statistics of a trained norm layer, say). The frozen
  pretrained components (the 1.4 B UNet base, VAE, CLIP, RoBERTa) are rebuilt from the pretrained folder.
- ``optimizer``, ``scheduler``, ``scaler`` (``GradScaler`` state, None without fp16 AMP): ``state_dict()``s.
- ``epoch``: epochs completed, i.e. the epoch a resumed run continues; ``data_position``: samples of that
  epoch's per-rank order already consumed; ``step``: optimizer steps done in total.
- ``rng``: one ``capture_rng_state()`` per rank (python, numpy, torch CPU, the rank's GPU or None).
- ``config``: the resolved config of the run.

Everything is plain Python types and tensors, so ``torch.load(..., weights_only=True)`` reads it.
Files are written atomically; ``last.pth`` is a copy of the newest one.

Starting a *new* run from the weights of another (``main.py --init_from``, fine-tuning): ``read_init_weights``
reads the trainable weights of a checkpoint or a ``save_pretrained`` folder and ``init_model_weights`` copies them
into a model, leniently about names (missing and unexpected ones are reported, not fatal) and strictly about
shapes (one error listing every mismatch); ``skip`` patterns leave chosen parameters at their fresh initialisation.
"""
import fnmatch
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from util.atomic_write import atomic_write
from util.errors import UserInputError

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "data_position", "rng", "config")
LAST = "last.pth"


class CheckpointError(UserInputError):
    """A checkpoint that cannot be loaded into this model or run."""


def step_checkpoint_name(step: int) -> str:
    return f"checkpoint_step{step:07d}.pth"


def epoch_checkpoint_name(epoch: int) -> str:
    """Name of the checkpoint written after ``epoch`` epochs have been completed (1-based)."""
    return f"checkpoint_epoch{epoch:03d}.pth"


def _trainable_entries(model: nn.Module) -> dict[str, torch.Tensor]:
    """The live tensors of ``model.state_dict()`` that belong to the trainable subset (see module doc)."""
    names = set()
    for prefix, module in model.named_modules():
        own = [name for name, p in module.named_parameters(recurse=False) if p.requires_grad]
        if own:
            dot = f"{prefix}." if prefix else ""
            names.update(dot + name for name in own)
            names.update(dot + name for name, _ in module.named_buffers(recurse=False))
    # Intersecting with state_dict() drops non-persistent buffers and uses the names loading expects.
    return {key: value for key, value in model.state_dict().items() if key in names}


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable weights of ``model`` (unwrapped, not the DDP wrapper)."""
    return {key: value.detach().cpu().clone() for key, value in _trainable_entries(model).items()}


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    shown = "\n".join(f"    {item}" for item in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"


def load_model_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load checkpoint weights ``state`` into the trainable subset of ``model``, strictly.

    Keys missing from ``state``, keys ``model`` has no trainable entry for, and shape mismatches are all
    reported in one ``CheckpointError``; nothing is loaded then.
    """
    expected = _trainable_entries(model)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshaped = [
        f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & state.keys())
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or misshaped:
        parts = [_listing(title, items) for title, items in
                 (("missing from the checkpoint", missing), ("unexpected (not trainable in this model)", unexpected),
                  ("shape mismatch", misshaped)) if items]
        raise CheckpointError(
            "checkpoint weights do not match the trainable parameters of the model (was it trained with a "
            "different config?):\n" + "\n".join(parts))
    model.load_state_dict(state, strict=False)


def capture_rng_state() -> dict:
    """The global RNG streams of this process: python ``random``, numpy's legacy global, torch CPU and the current
    CUDA device."""
    version, mt_state, gauss = random.getstate()
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [bit_generator, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "torch": torch.get_rng_state(),
        # Each process drives one GPU (its current device); None when this process never used CUDA.
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of ``capture_rng_state`` (the CUDA stream goes to the current device, when there is one)."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    bit_generator, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((bit_generator, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def build_checkpoint(model: nn.Module, optimizer, scheduler, scaler, *, epoch: int, step: int, data_position: int,
                     rng: list[dict], config: dict) -> dict:
    """The checkpoint dict (``CHECKPOINT_KEYS``) of the current state; ``model`` is the unwrapped model."""
    return {
        "model": trainable_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "step": step,
        "data_position": data_position,
        "rng": rng,
        "config": config,
    }


def save_checkpoint(checkpoint: dict, output_dir: str | Path, name: str) -> Path:
    """Write ``checkpoint`` to ``output_dir/name`` and copy it to ``output_dir/last.pth``, each atomically."""
    output_dir = Path(output_dir)
    path = output_dir / name
    atomic_write(path, lambda f: torch.save(checkpoint, f))
    with path.open("rb") as source:
        atomic_write(output_dir / LAST, lambda f: shutil.copyfileobj(source, f))
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by ``save_checkpoint`` (tensors on the CPU, ``weights_only`` unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a .pth written by main.py "
                                "(e.g. <output_dir>/last.pth)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a training checkpoint of main.py: it holds a {type(checkpoint).__name__}")
    absent = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
    if absent:
        raise CheckpointError(f"{path} is not a training checkpoint of main.py: it lacks {absent}")
    return checkpoint


# ----------------------------------------------------------------------------- new runs from trained weights

PRETRAINED_WEIGHTS_FILE = "model.safetensors"  # of a Predictor.save_pretrained folder (beside config.yaml)


def read_init_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The trainable weights stored in ``path``: a ``main.py`` checkpoint (.pth) or a ``save_pretrained`` folder
    (its ``model.safetensors``), on the CPU."""
    path = Path(path)
    if path.is_dir():
        weights = path / PRETRAINED_WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing: {path} must be a folder written by "
                                    f"Predictor.save_pretrained (config.yaml + {PRETRAINED_WEIGHTS_FILE}) or a .pth "
                                    "checkpoint of main.py")
        from safetensors.torch import load_file  # only when a folder is read

        return load_file(weights)
    return load_checkpoint(path)["model"]


def matches_pattern(name: str, pattern: str) -> bool:
    """Whether parameter ``name`` matches ``pattern``: as a glob of the whole name or of a module prefix
    (``class_embed`` and ``class_embed*`` match ``class_embed.0.weight``), or as a regular expression matching
    the whole name (``.*bbox_embed\\.\\d+\\.layers\\.2\\..*``)."""
    if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*"):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


@dataclass
class InitReport:
    """What ``init_model_weights`` did, each a sorted list of state-dict names."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # trainable in the model, not in the weights: kept fresh
    unexpected: list[str] = field(default_factory=list)  # in the weights, not trainable in the model: ignored
    skipped: list[str] = field(default_factory=list)  # matched by a skip pattern: kept fresh

    def summary(self, source: str | Path) -> str:
        lines = [f"initialised {len(self.loaded)} trainable tensors from {source}"]
        for title, items in (("skipped (--init_skip), left at their initialisation", self.skipped),
                             ("missing from the weights, left at their initialisation", self.missing),
                             ("unexpected (not trainable in this model), ignored", self.unexpected)):
            if items:
                lines.append(_listing(title, items))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, list[str]]:
        return {"loaded": self.loaded, "missing": self.missing, "unexpected": self.unexpected,
                "skipped": self.skipped}


def init_model_weights(model: nn.Module, state: dict[str, torch.Tensor], skip: list[str] | tuple = (),
                       source: str | Path = "the weights") -> InitReport:
    """Copy the trained weights ``state`` into the trainable subset of ``model`` (a new run's initialisation).

    Names that ``model`` has and ``state`` lacks keep their fresh values (``missing``); names of ``state`` that are
    not trainable in ``model`` are ignored (``unexpected``); names matching a ``skip`` pattern (``matches_pattern``)
    on either side are left out (``skipped``). Raises ``CheckpointError``, before changing anything, when a shared
    name has another shape (every such name with both shapes: the weights come from another config, e.g. another
    ``hidden_dim`` or ``num_queries``), when a skip pattern matches no name, or when no tensor would be loaded.
    """
    expected = _trainable_entries(model)
    skip = list(skip)
    names = expected.keys() | state.keys()
    skipped = {name for name in names if any(matches_pattern(name, pattern) for pattern in skip)}
    unused = [pattern for pattern in skip if not any(matches_pattern(name, pattern) for name in names)]
    if unused:
        raise CheckpointError(f"--init_skip pattern(s) {unused} match no parameter of the model or of {source} "
                              "(a glob such as 'class_embed*' or a regular expression over names like "
                              f"{sorted(expected)[:3]})")
    shared = sorted((expected.keys() & state.keys()) - skipped)
    misshaped = [f"{name}: {source} {tuple(state[name].shape)}, model {tuple(expected[name].shape)}"
                 for name in shared if state[name].shape != expected[name].shape]
    if misshaped:
        raise CheckpointError(
            f"{source} does not fit this model: {len(misshaped)} tensor(s) have other shapes (trained with another "
            "config, e.g. model.hidden_dim or model.num_queries?); use the same model config, or leave them out "
            "with --init_skip PATTERN to re-learn them:\n" + _listing("shape mismatch", misshaped, limit=50))
    if not shared:
        raise CheckpointError(f"no trainable tensor of this model is in {source} (none of its "
                              f"{len(state)} names matches one of the model's {len(expected)})")
    model.load_state_dict({name: state[name] for name in shared}, strict=False)
    return InitReport(loaded=shared, missing=sorted(expected.keys() - state.keys() - skipped),
                      unexpected=sorted(state.keys() - expected.keys() - skipped),
                      skipped=sorted(skipped))
