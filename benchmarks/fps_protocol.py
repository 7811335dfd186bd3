"""Inference speed by ReferDINO's FPS protocol, shared by ``bench_fps.py`` and ``bench_gpu.py``.

Per expression, the timed section is the model forward (query-slot selection included) + cropping the padding +
bilinear upsampling to the original frame size + the threshold, with the device synchronised before and after;
decoding the frames, preprocessing them and writing the PNGs are outside it. FPS = sum of frames / sum of
seconds over the timed expressions, after ``warmup`` untimed ones.
"""
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from benchmarks.full_size import autocast
from util.nested_tensor import NestedTensor


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """(fn(), wall seconds) with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def protocol_probabilities(model, samples: NestedTensor, sentences: list[str], resized_size: tuple[int, int],
                           original_size: tuple[int, int], dtype: str) -> torch.Tensor:
    """Forward, crop to ``resized_size`` (H, W before padding), upsample to ``original_size`` -> probabilities
    float32 ``[K, T, H0, W0]``; ``dtype`` "float32" or "bfloat16" (autocast)."""
    height, width = resized_size
    device = samples.tensors.device
    with torch.inference_mode(), autocast(device, dtype):
        logits = model(samples, sentences)["pred_masks"][:, :, :height, :width].float()  # [K, T, h, w]
        return F.interpolate(logits, size=original_size, mode="bilinear", align_corners=False).sigmoid()


def protocol_fps(model, expressions: Iterable[tuple], dtype: str, threshold: float = 0.5, warmup: int = 1) -> dict:
    """``{"fps", "frames", "seconds", "expressions"}`` over ``expressions``: ``(samples [1, T, 3, Hp, Wp], sentence,
    resized_size, original_size)`` each, prepared outside the timing (a generator may decode them lazily); the
    first ``warmup`` are run untimed."""
    frames, seconds, count = 0, 0.0, 0
    for index, (samples, sentence, resized_size, original_size) in enumerate(expressions):
        masks, elapsed = timed(lambda: protocol_probabilities(model, samples, [sentence], resized_size, original_size,
                                                              dtype) > threshold, samples.tensors.device)
        if index >= warmup:
            frames, seconds, count = frames + masks.shape[1], seconds + elapsed, count + 1
    if count == 0:
        raise ValueError(f"no expression was timed: give more than warmup={warmup} expressions")
    return {"fps": frames / seconds, "frames": frames, "seconds": seconds, "expressions": count}
