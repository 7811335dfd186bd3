"""One training epoch: forward, weighted losses, backward, clipping, optimizer step, logging.

``main.py`` builds everything and calls ``train_one_epoch`` once per epoch; evaluation lives elsewhere.
"""
import time
from typing import Callable, NamedTuple

import torch
from torch import nn
from tqdm import tqdm

from util.amp import AMP_DTYPES, autocast
from util.cpu_threads import ThreadGovernor
from util.distributed import all_reduce_mean, is_main_process
from util.train_log import TrainLog


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops instead of skipping the step."""


class EpochResult(NamedTuple):
    step: int  # optimizer steps done in total, this epoch included
    batches: int  # batches of the loader consumed (fewer than len(loader) when max_steps stopped the epoch)


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    """Copies of ``targets`` with their tensors on ``device`` (strings and other values kept)."""
    return [{key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
             for key, value in target.items()} for target in targets]


def to_float32(outputs):
    """``outputs`` (nested dicts/lists of tensors) with floating tensors in float32, so that the losses are
    computed in full precision after an autocast forward."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {key: to_float32(value) for key, value in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(to_float32(value) for value in outputs)
    return outputs


def weighted_losses(losses: dict[str, torch.Tensor], weight_dict: dict[str, float]) -> dict[str, torch.Tensor]:
    """``{k: losses[k] * weight_dict[k]}`` for every ``k`` of ``weight_dict`` (the terms of the total loss)."""
    missing = [key for key in weight_dict if key not in losses]
    if missing:
        raise KeyError(f"the criterion returned no {missing} although its weight_dict weights them; "
                       f"it returned {sorted(losses)}")
    return {key: losses[key] * weight for key, weight in weight_dict.items()}


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    device: torch.device,
    epoch: int,
    *,
    step: int,
    max_steps: int | None = None,
    amp: str = "none",
    clip_max_norm: float = 0.0,
    log_every: int = 20,
    train_log: TrainLog | None = None,
    on_step: Callable[[int, int], bool | None] | None = None,
    thread_governor: ThreadGovernor | None = None,
) -> EpochResult:
    """Train on every batch of ``loader`` (or until ``step`` reaches ``max_steps``).

    ``loader`` yields ``(samples: NestedTensor, captions: list[str], targets: list[dict])``; ``model(samples,
    captions, targets)`` returns the outputs and ``criterion(outputs, targets)`` the unweighted losses, of
    which ``criterion.weight_dict`` gives the weighted sum that is minimised. ``amp`` is ``"none"``,
    ``"bf16"`` (autocast) or ``"fp16"`` (autocast with ``scaler``). Gradients of the trainable parameters are
    clipped to norm ``clip_max_norm`` (0 = no clipping).

    ``thread_governor`` (``util.cpu_threads.ThreadGovernor``; None: the thread count stays as it is) updates the
    CPU thread count before each step to the cores that other processes leave free, so that a competing process
    slows training proportionally, at the price of bit-exact reproducibility (reductions depend on the count).

    ``step`` counts optimizer steps before this epoch. After each step ``on_step(step, batches_done)`` runs
    (on every rank: it may hold collectives such as checkpointing); a true result ends the epoch there (a
    requested stop: it must be true on every rank at the same step). Every ``log_every`` steps the losses,
    averaged over ranks and over the steps since the previous record, go to ``train_log`` (rank 0 only:
    pass None elsewhere) with the learning rate of the first parameter group and the seconds per step.

    Raises ``NonFiniteLossError`` naming the step and every loss term if the total loss is not finite on
    any rank (all ranks see the same averaged losses, so they stop together).
    """
    model.train()
    criterion.train()
    amp_dtype = AMP_DTYPES[amp]
    if amp_dtype is torch.float16 and scaler is None:
        raise ValueError("amp='fp16' needs a GradScaler")
    params = [p for p in model.parameters() if p.requires_grad]
    names = ["loss", *criterion.weight_dict]
    window_sum, window_steps, window_start = None, 0, time.perf_counter()
    progress = tqdm(loader, total=len(loader), desc=f"epoch {epoch}", disable=not is_main_process(),
                    dynamic_ncols=True)
    batches = 0
    for samples, captions, targets in progress:
        if thread_governor is not None:
            thread_governor.update()
        samples = samples.to(device, non_blocking=True)
        targets = targets_to(targets, device)
        with autocast(device, amp):
            outputs = model(samples, captions, targets)
        terms = weighted_losses(criterion(to_float32(outputs), targets), criterion.weight_dict)
        total = sum(terms.values())

        # Averaged over ranks every step: the same finiteness verdict everywhere, and the numbers to log.
        mean_terms = all_reduce_mean(torch.stack([total.detach(), *(v.detach() for v in terms.values())]))
        if not torch.isfinite(mean_terms).all():
            values = ", ".join(f"{name}={value:.6g}" for name, value in zip(names, mean_terms.tolist()))
            raise NonFiniteLossError(
                f"non-finite loss at optimizer step {step + 1} (epoch {epoch}): {values}. Lower train.lr, use "
                f"--amp bf16/none instead of fp16, or check the batch; resume from the last checkpoint.")

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        if clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, clip_max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

        step += 1
        batches += 1
        window_sum = mean_terms if window_sum is None else window_sum + mean_terms
        window_steps += 1
        if step % log_every == 0:
            averages = (window_sum / window_steps).tolist()
            if train_log is not None:
                record = {"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"]}
                record.update(zip(names, averages))
                record["time"] = (time.perf_counter() - window_start) / window_steps
                train_log.write(record)
            progress.set_postfix(loss=f"{averages[0]:.4f}")
            window_sum, window_steps, window_start = None, 0, time.perf_counter()
        if on_step is not None and on_step(step, batches):
            break
        if max_steps is not None and step >= max_steps:
            break
    progress.close()
    return EpochResult(step, batches)
