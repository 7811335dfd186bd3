"""Process-group helpers for single-process and ``torchrun`` (DDP) runs, and the per-rank data order.

Every helper works unchanged in a single process (no process group): rank 0 of a world of 1.
"""
import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

# A rank that died or hangs should fail the job within minutes, not after the default hours.
TIMEOUT = datetime.timedelta(minutes=10)
# Sharded inference meets only at the end, where the ranks wait for the slowest one: balanced shards still differ
# by up to a long video.
INFERENCE_TIMEOUT = datetime.timedelta(hours=12)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: str, timeout: datetime.timedelta = TIMEOUT) -> tuple[int, int, int]:
    """Join the process group that ``torchrun`` describes in ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    NCCL on ``device="cuda"`` (each process takes GPU ``LOCAL_RANK``), gloo on ``"cpu"``. Without those
    variables the run is a single process and nothing is initialised. ``timeout``: how long a collective waits
    for the other ranks. Returns ``(rank, world_size,
    local_rank)``.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} visible GPU(s); "
                               "lower --nproc_per_node or set CUDA_VISIBLE_DEVICES")
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return rank, world_size, local_rank


def rank_device(device: str, local_rank: int) -> torch.device:
    """Where this process runs: GPU ``local_rank`` for ``device="cuda"`` (as ``init_distributed`` set it), else
    the CPU."""
    return torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over all ranks (a new tensor; the input is unchanged)."""
    if not is_distributed():
        return tensor.detach().clone()
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / get_world_size()


def any_rank_max(value: int) -> int:
    """The largest ``value`` over all ranks (an integer flag every rank then agrees on); ``value`` in one process."""
    if not is_distributed():
        return value
    # gloo reduces CPU tensors; NCCL needs them on the rank's GPU.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    flag = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (no-op in a single process)."""
    if is_distributed():
        dist.destroy_process_group()


@contextmanager
def process_group(device: str, timeout: datetime.timedelta = TIMEOUT) -> Iterator[int]:
    """``init_distributed`` for the block, ``cleanup`` after it (also when it raises); yields this process's rank."""
    rank, _, _ = init_distributed(device, timeout)
    try:
        yield rank
    finally:
        cleanup()


def epoch_order(num_samples: int, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    """The dataset indices rank ``rank`` visits in ``epoch``: a pure function of its arguments.

    One permutation of ``range(num_samples)`` seeded by ``(seed, epoch)`` is shared by all ranks; it is cut to
    a multiple of ``world_size`` (the remainder is dropped so every rank runs the same number of steps) and
    dealt round-robin, as ``DistributedSampler(drop_last=True)`` does. A resumed run recomputes the same
    list and skips the part already consumed.
    """
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    order = torch.randperm(num_samples, generator=generator).tolist()
    usable = num_samples - num_samples % world_size
    return order[rank:usable:world_size]
