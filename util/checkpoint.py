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
"""
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from util.atomic_write import atomic_write

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "data_position", "rng", "config")
LAST = "last.pth"


class CheckpointError(ValueError):
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
