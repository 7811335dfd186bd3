"""Mixed precision: the ``--amp`` names and the autocast context of a forward pass (training, evaluation and
``inference.predictor.Predictor`` use the same two pieces)."""
from contextlib import AbstractContextManager, nullcontext

import torch

from util.errors import UserInputError

# "none": full precision; "bf16": autocast to bfloat16; "fp16": autocast to float16 (training adds a GradScaler).
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# What inference accepts: fp16 without a scaler's range checks is not offered there.
INFERENCE_AMP = ("none", "bf16")


def check_amp(amp: str, allowed=tuple(AMP_DTYPES)) -> str:
    """``amp`` unchanged; UserInputError unless it is one of ``allowed``."""
    if amp not in allowed:
        raise UserInputError(f"amp must be one of {sorted(allowed)}, got {amp!r}")
    return amp


def autocast(device: torch.device | str, amp: str, allowed=tuple(AMP_DTYPES)) -> AbstractContextManager:
    """Autocast to the dtype of ``amp`` on ``device``'s type; "none": a context that changes nothing."""
    dtype = AMP_DTYPES[check_amp(amp, allowed)]
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else nullcontext()
