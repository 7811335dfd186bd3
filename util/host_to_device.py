"""Copies of small host tensors (token ids, level shapes) to the device without waiting for it.

A plain ``tensor.to("cuda")`` from pageable host memory returns only once the copy is done, and the copy queues
behind every kernel already launched: the host waits for the device, as ``.item()`` would. From pinned memory with
``non_blocking=True`` the copy is queued like a kernel and the host goes on (the pinned block stays reserved until the
copy has run).
"""
import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``; on a GPU through pinned memory, without waiting for the device."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
