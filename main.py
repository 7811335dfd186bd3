"""Train HCD, or evaluate a model (``--eval``).

    python main.py --config configs/refshapes_tiny.yaml
    torchrun --nproc_per_node 8 main.py --config configs/ytvos_hcd.yaml --device cuda
    python main.py --resume outputs/demo/last.pth                      # continue that run exactly
    python main.py --config configs/refshapes_tiny.yaml --resume outputs/demo/last.pth   # the same
    python main.py --config configs/davis_hcd.yaml --init_from outputs/ytvos_hcd/last.pth   # fine-tune: a new run
    python main.py --eval --resume outputs/demo/last.pth

The YAML config gives every setting and the flags below override single keys (``--set key.sub=value`` for any
other key). The resolved config is written to ``<output_dir>/config.yaml``; checkpoints
(``checkpoint_step*.pth``, ``checkpoint_epoch*.pth`` and ``last.pth``, see ``util/checkpoint.py``), the JSON log
``log.jsonl`` and TensorBoard scalars (``tb/``) go beside it. Under ``torchrun`` each process trains on its
shard of every epoch with DDP (NCCL on GPU, gloo on CPU); ``train.batch_size`` is per process and the learning
rate is used as given, whatever the number of processes.

Stopping: SIGTERM (a scheduler's preemption, ``scancel``, a time limit, ``timeout``; sent to main.py alone or to
the whole process group or job, data-loader workers included) or SIGINT (Ctrl-C) makes every rank finish the
current optimizer step, write ``checkpoint_step<step>.pth`` / ``last.pth`` and exit with status 128 + the signal
number (143 for SIGTERM, 130 for SIGINT: the run did not finish, so ``train && evaluate`` stops there). A repeated
SIGTERM changes nothing (under Slurm and torchrun each rank gets two; schedulers follow up with SIGKILL themselves);
a second Ctrl-C stops at once. Under torchrun the agent forwards the signal to the ranks, waits for them up to its
``--shutdown_timeout`` (30 s by default) before it SIGKILLs them, and itself exits with status 1 whatever the ranks
did (``util/graceful_stop.py``).

Crashes and exact resume: every checkpoint is written atomically, so after any crash, ``kill -9`` included,
``--resume <output_dir>/last.pth`` continues from the newest complete checkpoint, to the same end (``--max_steps``
is saved with the run as ``train.max_steps``). On the CPU the resumed run ends with the same weights as the
uninterrupted run would have, bit for bit, on the same kind of CPU with the same number of processes: CPU
reductions depend on the thread count, so a run chooses it when it starts (the cores other processes leave free
then), prints it, records it in its checkpoints and keeps it, resumes included; two runs with the same count
(``--set train.cpu_threads=N`` fixes it) are bit-identical too. On GPUs resume restores the data order, the RNG
streams and the optimizer state but not the last bits of the weights: the backward pass of the deformable
attention adds gradients with atomic operations (CUDA and Triton kernels), whose order varies from run to run.
``--adaptive_threads`` gives up bit-exactness on the CPU too, for speed beside processes that start later.

Exit status 0: the run finished (``--max_steps`` or all epochs); 1: an error, printed as one line when it is about
the input (a missing or malformed file, a config or checkpoint that does not fit).
"""
import argparse
import json
import random
import signal
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import MultiStepLR

from datasets import build_dataset
from engine import train_one_epoch
from models import build_model
from util.amp import AMP_DTYPES
from util.atomic_write import atomic_write
from util.checkpoint import (CheckpointError, InitReport, build_checkpoint, capture_rng_state, epoch_checkpoint_name,
                             init_model_weights, load_checkpoint, load_model_weights, read_init_weights,
                             restore_rng_state, save_checkpoint, step_checkpoint_name)
from util.cli import add_device_argument, exit_on_user_error, resolve_device
from util.config import (ConfigError, apply_overrides, differing_keys, get_key, load_config, save_config,
                         upgrade_saved_config)
from util.cpu_threads import ThreadGovernor, free_threads, run_thread_count
from util.distributed import (INFERENCE_TIMEOUT, all_gather_objects, any_rank_max, cleanup, epoch_order,
                              init_distributed, is_main_process, rank_device)
from util.errors import UserInputError
from util.graceful_stop import GracefulStop, StopSafeDataLoader
from util.nested_tensor import collate_clips
from util.train_log import TrainLog

# Parameters of the deformable attention's sampling offsets and reference points (DETR-family convention).
LINEAR_PROJ_NAMES = ("reference_points", "sampling_offsets")
# What a resumed run cannot change: the restored optimizer, scheduler and data order embody these.
RESUME_FIXED_KEYS = ("seed", "train.lr", "train.lr_linear_proj_mult", "train.weight_decay", "train.lr_drop")
# The CPU thread count a run trained with, in its checkpoints (util/cpu_threads.py: reductions depend on it).
THREADS_KEY = "cpu_threads"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config of a new run, giving every setting (configs/*.yaml); with "
                                         "--resume it must resolve to the config saved in the checkpoint (the "
                                         "original command line with --resume appended), which the run continues")
    parser.add_argument("--resume", metavar="PATH",
                        help="checkpoint (.pth, e.g. <output_dir>/last.pth) to continue: weights, optimizer, "
                             "scheduler, AMP scaler, RNG streams and position in the epoch are restored, so the "
                             "run goes on as if never stopped (seed, lr, lr_drop, weight_decay cannot change then). "
                             "With --eval: the weights to evaluate")
    parser.add_argument("--init_from", metavar="CKPT",
                        help="start a new run (--config; fresh optimizer, schedule and step counter) from the model "
                             "weights of a main.py checkpoint (.pth) or a Predictor.save_pretrained folder, e.g. "
                             "fine-tuning on Ref-DAVIS17 from a Ref-YouTube-VOS model; missing and unexpected names "
                             "are listed, other shapes are an error. Not with --resume")
    parser.add_argument("--init_skip", action="append", metavar="PATTERN", default=[],
                        help="with --init_from: leave the parameters whose names match PATTERN (a glob of the name "
                             "or a module prefix, or a regular expression) at their initialisation, e.g. heads to "
                             "re-learn; repeatable")
    parser.add_argument("--eval", action="store_true",
                        help="evaluate instead of training (evaluate.run_evaluation) on the config's dataset")
    parser.add_argument("--data_root", help="dataset folder (config key data_root)")
    parser.add_argument("--weights", help="folder of the pretrained components (config key weights)")
    parser.add_argument("--output_dir", help="folder for checkpoints, config.yaml, log.jsonl, tb/ (config key "
                                             "output_dir)")
    parser.add_argument("--epochs", type=int, help="number of epochs to train (train.epochs)")
    parser.add_argument("--max_steps", type=int,
                        help="stop after this many optimizer steps in total, counted across epochs and resumes, "
                             "and write a checkpoint (train.max_steps: saved with the run, so --resume continues to "
                             "it; default: run all train.epochs)")
    parser.add_argument("--batch_size", type=int, help="clips per process and step (train.batch_size)")
    parser.add_argument("--lr", type=float, help="learning rate of the trainable parameters, used as given for "
                                                 "any number of processes (train.lr)")
    add_device_argument(parser, "training and evaluation run")
    parser.add_argument("--amp", choices=tuple(AMP_DTYPES),
                        help="mixed precision: none, bf16 (autocast) or fp16 (autocast + gradient scaler) "
                             "(train.amp)")
    parser.add_argument("--seed", type=int, help="seed of model initialisation, data order, augmentation and "
                                                 "dropout (config key seed)")
    parser.add_argument("--checkpoint_every", type=int, metavar="N",
                        help="also write checkpoint_step<step>.pth every N optimizer steps "
                             "(train.checkpoint_every)")
    parser.add_argument("--num_workers", type=int, help="data loader worker processes (train.num_workers)")
    parser.add_argument("--adaptive_threads", action="store_true", default=None,
                        help="on the CPU, let the thread count follow the cores that other processes leave free "
                             "(train.adaptive_threads; util/cpu_threads.py): beside another busy process a step "
                             "then slows in proportion instead of stalling, but the count follows the machine's "
                             "load, so --resume and two identical runs are no longer bit-identical. Default: the "
                             "count is chosen when the run starts (the cores free then; --set train.cpu_threads=N "
                             "sets it), recorded in its checkpoints and kept to its end")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any existing config key, value parsed as YAML, e.g. --set "
                             "model.dropout=0.0 --set train.lr_drop=[3,5]; repeatable")
    return parser


def resolve_config(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """The resolved config of this run, and the checkpoint to resume from (or None).

    With ``--resume`` the config is the checkpoint's (``train.max_steps`` included, so the run keeps its plan) with
    the command's overrides. ``--config`` beside ``--resume`` (the original command line with ``--resume``
    appended) must resolve, with the same overrides, to that same config; a different one is refused, naming the
    keys that differ.
    """
    if args.resume is None:
        return apply_overrides(load_config(args.config), args), None
    checkpoint = load_checkpoint(args.resume)
    base = upgrade_saved_config(checkpoint["config"], f"the config saved in {args.resume}")
    cfg = apply_overrides(base, args)
    if args.config is not None:
        changed = differing_keys(apply_overrides(load_config(args.config), args), cfg)
        if changed:
            raise ConfigError(f"--config {args.config} (with this command's overrides) is not the config of the run "
                              f"in {args.resume}: they differ in {changed}; resume without --config to continue "
                              f"that run, or start a new run with a new --output_dir")
    if not args.eval:
        changed = [key for key in RESUME_FIXED_KEYS if get_key(cfg, key) != get_key(base, key)]
        if changed:
            raise ConfigError(f"--resume continues the saved run, whose optimizer, scheduler and data order fix "
                              f"{changed}; start a new run with --config to change them")
    return cfg, checkpoint


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(model: torch.nn.Module, lr: float, linear_proj_mult: float) -> list[dict]:
    """Trainable parameters at ``lr``, those named like ``LINEAR_PROJ_NAMES`` at ``lr * linear_proj_mult``."""
    base, linear_proj = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (linear_proj if any(key in name for key in LINEAR_PROJ_NAMES) else base).append(param)
    if not base and not linear_proj:
        raise ValueError("the model has no trainable parameters (requires_grad)")
    groups = [{"params": base, "lr": lr}]
    if linear_proj:
        groups.append({"params": linear_proj, "lr": lr * linear_proj_mult})
    return groups


def build_optimization(model: torch.nn.Module, train_cfg: dict, device: torch.device):
    """``(AdamW, MultiStepLR stepped per epoch, GradScaler for fp16 AMP or None)`` from ``cfg["train"]``."""
    optimizer = torch.optim.AdamW(param_groups(model, train_cfg["lr"], train_cfg["lr_linear_proj_mult"]),
                                  lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    scheduler = MultiStepLR(optimizer, milestones=train_cfg["lr_drop"], gamma=0.1)
    scaler = torch.amp.GradScaler(device.type) if train_cfg["amp"] == "fp16" else None
    return optimizer, scheduler, scaler


def restore_training(checkpoint: dict, model, optimizer, scheduler, scaler) -> tuple[int, int, int]:
    """Load the checkpoint's weights and optimisation state; returns its ``(epoch, step, data_position)``.

    A checkpoint without scaler state (trained without fp16) leaves a fresh scaler.
    """
    load_model_weights(model, checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint["scaler"] is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    return checkpoint["epoch"], checkpoint["step"], checkpoint["data_position"]


def build_train_loader(dataset, indices: list[int], batch_size: int, num_workers: int, size_divisibility: int,
                       seed: int, epoch: int, pin_memory: bool) -> StopSafeDataLoader:
    """Batches of ``indices`` in order (an incomplete last batch is dropped)."""
    batches = [indices[i:i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]
    # An own generator keeps the loader from drawing its worker base seed from the global torch RNG, which
    # would shift the dropout stream of a resumed run against the uninterrupted one. The workers leave SIGTERM and
    # SIGINT to this process's GracefulStop, also when the signal goes to the whole process group.
    return StopSafeDataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                              collate_fn=partial(collate_clips, size_divisibility=size_divisibility),
                              generator=torch.Generator().manual_seed(seed + epoch))


def restore_run_rng(rng_states: list[dict], rank: int, world_size: int, data_position: int, seed: int) -> None:
    """Continue this rank's RNG streams from the checkpoint (one state per rank of the saved run)."""
    if len(rng_states) == world_size:
        restore_rng_state(rng_states[rank])
    elif data_position == 0:
        warnings.warn(f"checkpoint written by {len(rng_states)} process(es), resumed with {world_size}: the RNG "
                      "streams restart from the seed, so the run is not an exact continuation")
        seed_everything(seed + rank)
    else:
        raise CheckpointError(f"this checkpoint stops inside an epoch of a {len(rng_states)}-process run; resume "
                              f"it with --nproc_per_node {len(rng_states)} (or from an epoch checkpoint)")


def train(args: argparse.Namespace, cfg: dict, checkpoint: dict | None) -> int:
    """Train; returns 0 when the run finished, ``128 + signal`` when SIGTERM/SIGINT stopped it (module doc)."""
    rank, world_size, local_rank = init_distributed(args.device)
    threads_before = torch.get_num_threads()
    try:
        with GracefulStop() as stop:
            return _train(args, cfg, checkpoint, rank, world_size, local_rank, stop)
    finally:
        torch.set_num_threads(threads_before)  # the run's count ends with it (callers in this process: tests)
        cleanup()


def _train(args, cfg, checkpoint, rank, world_size, local_rank, stop: GracefulStop) -> int:
    device = rank_device(args.device, local_rank)
    train_cfg, seed = cfg["train"], cfg["seed"]
    batch_size, max_steps = train_cfg["batch_size"], train_cfg["max_steps"]
    output_dir = Path(cfg["output_dir"])
    threads = fix_thread_count(train_cfg, checkpoint)

    dataset = build_dataset(cfg["dataset"], "train", cfg)  # first: a malformed dataset fails before the model loads
    seed_everything(seed)  # the same initialisation on every rank
    model, criterion = build_model(cfg)
    init_report = init_from(model, args)
    model.to(device)
    criterion.to(device)
    optimizer, scheduler, scaler = build_optimization(model, train_cfg, device)
    epoch, step, position = 0, 0, 0
    if checkpoint is not None:
        epoch, step, position = restore_training(checkpoint, model, optimizer, scheduler, scaler)
    train_model = model
    if world_size > 1:
        train_model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)

    train_log = None
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / "config.yaml")
        if init_report is not None:
            save_init_record(output_dir, args, init_report)
        train_log = TrainLog(output_dir, resumed_step=step if checkpoint is not None else None)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"training {trainable:,} parameters on {world_size} process(es), {len(dataset)} clips; "
              f"from epoch {epoch} step {step}; output in {output_dir}")

    if checkpoint is not None:
        restore_run_rng(checkpoint["rng"], rank, world_size, position, seed)
    else:
        seed_everything(seed + rank)  # dropout differs between ranks
    last_saved = step if checkpoint is not None else None
    stopped_by = 0  # the signal every rank agreed to stop on
    # One governor for the run: its ceiling is the run's thread count, whatever it set in an earlier epoch.
    governor = ThreadGovernor() if train_cfg["adaptive_threads"] and device.type == "cpu" else None

    def save(name: str, saved_epoch: int, saved_position: int, saved_step: int) -> None:
        nonlocal last_saved
        rng = all_gather_objects(capture_rng_state())
        if is_main_process():
            state = build_checkpoint(model, optimizer, scheduler, scaler, epoch=saved_epoch, step=saved_step,
                                     data_position=saved_position, rng=rng, config=cfg)
            state[THREADS_KEY] = threads
            save_checkpoint(state, output_dir, name)
        last_saved = saved_step

    try:
        while epoch < train_cfg["epochs"] and (max_steps is None or step < max_steps) and not stopped_by:
            dataset.set_epoch(epoch)
            order = epoch_order(len(dataset), seed, epoch, rank, world_size)
            if len(order) < batch_size:
                raise UserInputError(f"the {cfg['dataset']} train split has {len(dataset)} clips: fewer than "
                                     f"batch_size {batch_size} x {world_size} process(es)")
            loader = build_train_loader(dataset, order[position:], batch_size, train_cfg["num_workers"],
                                        cfg["data"]["size_divisibility"], seed, epoch, device.type == "cuda")
            start = position

            def on_step(done_step: int, batches_done: int) -> bool:
                nonlocal stopped_by
                # Agreed every step: a signal may reach one rank only, and all must stop at the same step.
                stopped_by = any_rank_max(stop.signum)
                if done_step % train_cfg["checkpoint_every"] == 0:
                    save(step_checkpoint_name(done_step), epoch, start + batches_done * batch_size, done_step)
                return stopped_by != 0

            step, batches = train_one_epoch(
                train_model, criterion, loader, optimizer, scaler, device, epoch, step=step, max_steps=max_steps,
                amp=train_cfg["amp"], clip_max_norm=train_cfg["clip_max_norm"], log_every=train_cfg["log_every"],
                train_log=train_log, on_step=on_step, thread_governor=governor)
            if batches < len(loader):  # max_steps reached or a stop requested inside the epoch
                if last_saved != step:
                    save(step_checkpoint_name(step), epoch, start + batches * batch_size, step)
                break
            scheduler.step()
            epoch, position = epoch + 1, 0
            save(epoch_checkpoint_name(epoch), epoch, 0, step)
    finally:
        if train_log is not None:
            train_log.close()
    if stopped_by:
        if is_main_process():
            print(f"stopped by {signal.Signals(stopped_by).name} after step {step}; continue with --resume "
                  f"{output_dir / 'last.pth'}")
        return 128 + stopped_by
    if is_main_process():
        print(f"stopped at step {step} ({epoch} epoch(s) completed); checkpoints in {output_dir}")
    return 0


def fix_thread_count(train_cfg: dict, checkpoint: dict | None) -> int:
    """Set torch's CPU thread count for the run and say so on rank 0; returns it, to be recorded in the checkpoints.

    By default the count is fixed for the whole run (``util.cpu_threads.run_thread_count``: the config's, else the
    resumed run's, else the cores free now; the smallest over the ranks, so that one number describes the run).
    With ``train.adaptive_threads`` it is the governor's ceiling: the config's, else the process's count.
    """
    started_with = torch.get_num_threads()
    if train_cfg["adaptive_threads"]:
        threads, _ = run_thread_count(train_cfg["cpu_threads"], None, started_with)
    else:
        recorded = checkpoint.get(THREADS_KEY) if checkpoint is not None else None
        threads, source = run_thread_count(train_cfg["cpu_threads"], recorded, free_threads(started_with))
    threads = min(all_gather_objects(threads))
    torch.set_num_threads(threads)
    if not is_main_process():
        return threads
    if train_cfg["adaptive_threads"]:
        print(f"CPU threads: adaptive, 1 to {threads}, following the cores other processes leave free "
              f"(--resume and repeated runs are not bit-identical)")
        return threads
    print(f"CPU threads: {threads}, fixed for the whole run ({source})")
    if recorded is not None and recorded != threads:
        warnings.warn(f"the checkpoint was trained with {recorded} CPU thread(s), this run uses {threads} "
                      f"(train.cpu_threads): CPU reductions depend on it, so the run does not continue bit for bit; "
                      f"--set train.cpu_threads=null keeps the recorded count")
    return threads


def init_from(model: torch.nn.Module, args: argparse.Namespace) -> InitReport | None:
    """Load ``--init_from``'s weights into the fresh ``model`` (``util.checkpoint.init_model_weights``) and print the
    report on rank 0; None without ``--init_from``."""
    if args.init_from is None:
        return None
    report = init_model_weights(model, read_init_weights(args.init_from), args.init_skip, source=args.init_from)
    if is_main_process():
        print(report.summary(args.init_from))
    return report


def save_init_record(output_dir: Path, args: argparse.Namespace, report: InitReport) -> None:
    """``<output_dir>/init_from.json``: where the run's initial weights came from and what was (not) loaded."""
    record = {"init_from": str(args.init_from), "init_skip": args.init_skip, **report.as_dict()}
    atomic_write(output_dir / "init_from.json", lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))


def evaluate(args: argparse.Namespace, cfg: dict, checkpoint: dict | None) -> int:
    # Imported here so that training does not depend on the evaluation code and its extra packages.
    from evaluate import run_evaluation

    # The ranks meet only after segmenting their shares, which can take hours (as in inference).
    _, _, local_rank = init_distributed(args.device, INFERENCE_TIMEOUT)
    # SIGTERM / SIGINT, also sent to the whole job, end the evaluation at once with 128 + signal, as in inference:
    # what it writes is written atomically, and the same command evaluates again.
    try:
        with GracefulStop(exit_at_once=True):
            model = evaluation_model(args, cfg, checkpoint)
            model.to(rank_device(args.device, local_rank))
            run_evaluation(model, cfg, args)
    finally:
        cleanup()
    return 0


def evaluation_model(args: argparse.Namespace, cfg: dict, checkpoint: dict | None) -> torch.nn.Module:
    """The model of ``cfg`` in eval mode with the weights of ``checkpoint`` (``--resume``) or ``--init_from``."""
    seed_everything(cfg["seed"])
    model, _ = build_model(cfg)
    if checkpoint is not None:
        load_model_weights(model, checkpoint["model"])
    report = init_from(model, args)
    if report is not None and (report.missing or report.skipped):  # scores of a partly random model
        raise CheckpointError(f"--eval --init_from {args.init_from}: {len(report.missing) + len(report.skipped)} "
                              f"trainable tensors would stay random ({(report.missing + report.skipped)[:5]}...); "
                              f"evaluate weights that cover the whole model")
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; returns the exit status (module doc)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    if args.config is None and args.resume is None:
        parser.error("give --config (a new run; with --eval: an untrained model) or --resume (a saved run and its "
                     "config; override keys with flags or --set), or both (the config must then be the run's)")
    if args.init_from is not None and args.resume is not None:
        parser.error("--init_from starts a new run (with --config) from a model's weights, --resume continues a "
                     "saved run with its optimizer and step counter: give one of them")
    if args.init_skip and args.init_from is None:
        parser.error("--init_skip needs --init_from (the weights to skip parameters of)")
    if args.init_from is not None and not Path(args.init_from).exists():  # before the dataset is read
        parser.error(f"--init_from {args.init_from} does not exist: give a checkpoint of main.py (.pth) or a folder "
                     f"written by Predictor.save_pretrained")
    cfg, checkpoint = resolve_config(args)
    if args.eval:
        return evaluate(args, cfg, checkpoint)
    return train(args, cfg, checkpoint)


if __name__ == "__main__":
    exit_on_user_error(main)
