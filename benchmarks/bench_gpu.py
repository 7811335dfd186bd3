"""One prepared GPU benchmark: the figures that need a GPU, in one run of a few minutes, JSON on the last line.

    python -m benchmarks.bench_gpu --json             # a CUDA machine: <= 5 minutes on one H100/H200
    python -m benchmarks.bench_gpu --dry_run --json   # tiny widths on the CPU: every section runs, nothing rots

The model is the full-size HCD with random weights (``benchmarks/full_size.py``): the pretrained components in
bf16, the trainable parts in float32, AMP bf16. Sections (``--sections`` picks some; a failing section records
its error and the others still run, since GPU time is scarce; the exit status is 1 if any failed):

msda       MSDeformAttn forward and backward at the paper's encoder shapes (5 frames, levels 45x80, 23x40, 12x20,
           6x10, S = Lq = 4820, 8 heads x 32 channels, 4 points; float32 compute): median ms of --repeat runs and
           peak memory of forward + backward for the CUDA extension (installed, else built on first use, whose
           seconds are reported), Triton, pure PyTorch and ``auto`` (which times the GPU backends on first use
           and keeps the faster: its choice is reported), and each one's largest difference to PyTorch.
fps        Inference frames/s at short side 360 (640x360 frames, padded to 640x384, original size 1280x720) on
           36-frame clips, one expression each, by ReferDINO's protocol: the timed section is the model forward
           (slot selection included) + upsampling to the original size + threshold, with the GPU synchronised
           around it; decoding and writing images are outside it; FPS = sum of frames / sum of times over --videos
           clips after one warm-up. Eager, and with the heavy modules compiled (``inference/compilation.py``, on a
           copy of the model; the first clip's seconds, compilation included, are reported, and the largest
           difference of the compiled probabilities to the eager ones). The FLOPs of a frame
           (``torch.utils.flop_counter``: matrix products, convolutions, attention) and the share of --peak_flops
           that each FPS uses.
sentences  K = 4 sentences of one 36-frame clip: one call per sentence, all in one call, two per call with the
           frames encoded once (``benchmarks/sentence_batching.py``): median seconds of interleaved rounds after a
           warm-up of each way, the speed-ups, the share f of a one-sentence call that the sentences share (VAE,
           CLIP vision, UNet and TCMR stems, timed alone), the cap K / (f + K (1 - f)) and each speed-up as a
           fraction of it; the differences of the probabilities to the one-call-per-sentence ones, whether the
           refined slots agree and the smallest score margin between the best two slots, in bf16 and in float32
           (the frozen encoders converted, exactly, for that comparison).
train      One training step at T = 5, batch 1, 640x384, LoRA r = 16, UNet gradient checkpointing, AMP bf16,
           AdamW: peak memory (torch.cuda.max_memory_allocated over two steps, the first allocating AdamW's
           state), peak reserved memory and its ratio to the allocated peak (target <= 1.3; the allocator's
           expandable segments are on unless PYTORCH_CUDA_ALLOC_CONF says otherwise), the allocator's retries,
           and the second step's seconds.
ddp        NCCL on every visible GPU: one DDP step of a small MLP (its gradients must be equal on all ranks) and
           the median all-reduce time of a float32 buffer the size of HCD's trainable parameters.

--dry_run runs the same code on the CPU with the tiny offline set's components, ``configs/refshapes_tiny.yaml``,
float32 (bf16 is emulated, hence slow, on most CPUs; the bf16 paths of the model have their own tests),
3-frame clips of 112x64, one frame for msda (the C++ CPU kernel in the extension's row; Triton needs a GPU), the
``eager`` compile backend (dynamo's graph capture without code generation: inductor would compile C++ for minutes)
and gloo for ddp in one process. Its figures say nothing about a GPU.
"""
import argparse
import copy
import json
import math
import os
import socket
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


from benchmarks import sentence_batching
from benchmarks.bench_msda import make_inputs, median_ms, time_backward, with_backend
from benchmarks.frame_flops import flops
from benchmarks.fps_protocol import protocol_fps, protocol_probabilities, synchronize, timed
from benchmarks.full_size import (CAPTIONS, GB, REPO, build_random_model, load_tokenizers,
                                  model_config, peak_rss_gb, synthetic_clip, trainable_parameters, training_step)
from inference.compilation import compile_heavy_modules
from models.ops import kernels, ms_deform_attn_function, ms_deform_attn_pytorch
from models.pretrained import read_component_configs
from testing.tiny_weights import build_tiny_weights
from util.nested_tensor import NestedTensor

SECTIONS = ("msda", "fps", "sentences", "train", "ddp")
THRESHOLD = 0.5
H200_BF16_PEAK = 790e12  # issue 21's figure for an H200's dense bf16 rate (FLOP/s)
FIRST_GPU_FPS = 55.7  # issue 21: this section on one H200 at 4538b33, before compilation and bf16 MSDeformAttn
ALLOCATOR_ENV = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE_SEGMENTS = "expandable_segments:True"


@dataclass(frozen=True)
class Setting:
    """What a run measures on: the real GPU setting or the CPU dry run."""

    device: torch.device
    dtype: str  # of the pretrained components; bfloat16 also means AMP bf16
    config: Path
    frame_size: tuple[int, int]  # (H, W) of the preprocessed frames, before padding to a multiple of 32
    original_size: tuple[int, int]  # (H, W) the masks are upsampled to
    clip_frames: int  # frames of the fps / sentences clips
    train_size: tuple[int, int]  # padded (H, W) of the training clip
    train_frames: int
    msda_frames: int
    ddp_backend: str
    ddp_world: int
    compile_backend: str  # of the compiled fps measurement
    compared_precisions: tuple[str, ...]  # of the sentences section's differences


GPU = Setting(torch.device("cuda"), "bfloat16", REPO / "configs" / "ytvos_hcd.yaml", (360, 640), (720, 1280), 36, (384, 640),
              5, 5, "nccl", 0, "inductor", ("bfloat16", "float32"))
DRY_RUN = Setting(torch.device("cpu"), "float32", REPO / "configs" / "refshapes_tiny.yaml", (64, 112), (128, 224), 3,
                  (64, 96), 3, 1, "gloo", 1, "eager", ("float32",))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", action="store_true",
                        help="tiny widths on the CPU instead of the full-size model on the GPU")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every figure as the last line")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="NAME",
                        help=f"sections to run, among {', '.join(SECTIONS)} (default all)")
    parser.add_argument("--repeat", type=int, default=5, metavar="K",
                        help="timed runs per MSDeformAttn backend and pass, median reported (default 5)")
    parser.add_argument("--videos", type=int, default=3, metavar="V",
                        help="timed clips of the fps section, after one warm-up (default 3)")
    parser.add_argument("--rounds", type=int, default=3, metavar="R",
                        help="timed rounds of the sentences section, medians reported (default 3)")
    parser.add_argument("--compile_backend", metavar="NAME",
                        help="torch.compile backend of the fps section's compiled run, or none to skip that run "
                             "(default inductor; for --dry_run eager, i.e. dynamo's graph capture without code "
                             "generation, which still takes ~20 s of tracing on a CPU)")
    parser.add_argument("--peak_flops", type=float, default=H200_BF16_PEAK, metavar="FLOP/S",
                        help="the GPU's dense bf16 rate that the fps section's FLOP rates are compared with "
                             "(default 790e12, issue 21's figure for an H200; NVIDIA's data sheets give 989e12 for "
                             "H100/H200 SXM and 835e12 for H200 NVL: pass your GPU's)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.videos < 1 or args.rounds < 1 or args.peak_flops <= 0:
        parser.error("--repeat, --videos and --rounds must be at least 1, --peak_flops positive")
    return args


def peak_memory_gb(device: torch.device) -> float:
    """Peak of the CUDA allocator since the last reset, or the process's peak resident set on the CPU."""
    return torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else peak_rss_gb()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# --- msda ------------------------------------------------------------------------------------------------------

def msda_backends(device: torch.device) -> tuple[dict, dict]:
    """({name: op}, {notes}): the backends that exist here; the first-use CUDA build's seconds go in the notes."""
    backends, notes = {"pytorch": ms_deform_attn_pytorch}, {}
    if device.type == "cuda":
        start = time.perf_counter()
        extension = kernels.cuda_kernel()
        notes["cuda_extension_load_or_build_s"] = round(time.perf_counter() - start, 1)
        if extension is not None:
            backends["cuda_extension"] = with_backend("cpp")
        if kernels.triton_module() is not None:
            backends["triton"] = with_backend("triton")
    elif kernels.cpu_kernel() is not None:
        backends["cpp_cpu"] = with_backend("cpp")
    backends["auto"] = with_backend("auto")
    return backends, notes


def msda_section(setting: Setting, args) -> dict:
    device = setting.device
    inputs = make_inputs(device, frames=setting.msda_frames)
    backends, result = msda_backends(device)
    with torch.no_grad():
        reference = ms_deform_attn_pytorch(*inputs)
    for name, op in backends.items():
        with torch.no_grad():
            forward_ms = median_ms(lambda: op(*inputs), args.repeat, device)
            difference = (op(*inputs) - reference).abs().max().item()
        backward_ms = time_backward(op, inputs, args.repeat, device)
        reset_peak_memory(device)
        before = torch.cuda.memory_allocated(device) / GB if device.type == "cuda" else peak_rss_gb()
        leaves = [t.clone().requires_grad_() for t in (inputs[0], inputs[3], inputs[4])]
        op(leaves[0], inputs[1], inputs[2], leaves[1], leaves[2]).sum().backward()
        synchronize(device)
        result[name] = {"forward_ms": round(forward_ms, 2), "backward_ms": round(backward_ms, 2),
                        "peak_gb": round(peak_memory_gb(device) - before, 3), "max_abs_diff_vs_pytorch": difference}
    result["shapes"] = {"frames": setting.msda_frames, "queries": inputs[0].shape[1], "levels": inputs[1].tolist()}
    result["auto_choices"] = ms_deform_attn_function.chosen_backends()  # empty where one backend is all there is
    return result


# --- fps and sentences -----------------------------------------------------------------------------------------

def padded_clip(num_frames: int, size: tuple[int, int], device: torch.device, seed: int) -> NestedTensor:
    """Random normalised frames [1, T, 3, Hp, Wp] of ``size`` padded to multiples of 32, with their mask."""
    height, width = size
    padded = (math.ceil(height / 32) * 32, math.ceil(width / 32) * 32)
    generator = torch.Generator().manual_seed(seed)
    frames = torch.zeros(1, num_frames, 3, *padded)
    frames[..., :height, :width] = torch.randn(1, num_frames, 3, height, width, generator=generator)
    mask = torch.ones(1, num_frames, *padded, dtype=torch.bool)
    mask[..., :height, :width] = False
    return NestedTensor(frames, mask).to(device)


def segment(model, samples: NestedTensor, sentences: list[str], setting: Setting) -> torch.Tensor:
    """The timed section of the FPS protocol without the threshold -> probabilities float32 [K, T, H0, W0]."""
    return protocol_probabilities(model, samples, sentences, setting.frame_size, setting.original_size, setting.dtype)


def frame_flops(model, setting: Setting) -> float:
    """FLOPs of one frame: the FPS protocol's section on one clip with one sentence, counted by FlopCounterMode."""
    samples = padded_clip(setting.clip_frames, setting.frame_size, setting.device, seed=0)
    return flops(lambda: segment(model, samples, CAPTIONS[:1], setting), model) / setting.clip_frames


def fps_section(model, setting: Setting, args) -> dict:
    def clips():  # video 0: warm-up
        return ((padded_clip(setting.clip_frames, setting.frame_size, setting.device, seed=video), CAPTIONS[0],
                 setting.frame_size, setting.original_size) for video in range(args.videos + 1))

    per_frame = frame_flops(model, setting)
    runs = {"eager": protocol_fps(model, clips(), setting.dtype, THRESHOLD)}
    backend = args.compile_backend or setting.compile_backend
    if backend != "none":
        runs["compiled"] = compiled_fps(model, setting, backend, clips())
    for figures in runs.values():
        figures["fraction_of_peak"] = figures["fps"] * per_frame / args.peak_flops
    result = {"clip_frames": setting.clip_frames, "frame_size": list(setting.frame_size),
              "original_size": list(setting.original_size), "flops_per_frame": per_frame,
              "peak_flops": args.peak_flops, **runs,
              "fastest_vs_first_gpu_fps": max(figures["fps"] for figures in runs.values()) / FIRST_GPU_FPS}
    if "compiled" in runs:
        result["speedup_compiled_vs_eager"] = runs["compiled"]["fps"] / runs["eager"]["fps"]
    return result


def compiled_fps(model, setting: Setting, backend: str, clips) -> dict:
    """The fps protocol on a copy of ``model`` with its heavy modules compiled; the first clip's seconds
    (compilation included) and the largest difference of its probabilities to the eager model's."""
    compiled_model = copy.deepcopy(model)
    compile_heavy_modules(compiled_model, backend)
    first = padded_clip(setting.clip_frames, setting.frame_size, setting.device, seed=0)
    probabilities, first_s = timed(lambda: segment(compiled_model, first, CAPTIONS[:1], setting), setting.device)
    difference = (probabilities - segment(model, first, CAPTIONS[:1], setting)).abs().max().item()
    return {**protocol_fps(compiled_model, clips, setting.dtype, THRESHOLD), "backend": backend,
            "first_clip_s": first_s, "max_abs_diff_vs_eager": difference}


def sentences_section(model, setting: Setting, args) -> dict:
    samples = padded_clip(setting.clip_frames, setting.frame_size, setting.device, seed=0)
    sentences = CAPTIONS[:4]
    precision = "bfloat16" if setting.dtype == "bfloat16" else "float32"
    run = {"sentences": len(sentences),
           "speed": sentence_batching.speed(model, samples, sentences, setting.frame_size, setting.original_size,
                                            precision, args.rounds),
           "differences": {}}
    for compared in setting.compared_precisions:
        held = nullcontext() if compared == precision else sentence_batching.held_in(model, compared)
        with held:
            outcomes = {way: sentence_batching.run_way(model, samples, sentences, way, setting.frame_size,
                                                       setting.original_size, compared)
                        for way in sentence_batching.WAYS}
        run["differences"][compared] = sentence_batching.differences(outcomes)
    return run


# --- train -----------------------------------------------------------------------------------------------------

def train_section(model, criterion, setting: Setting) -> dict:
    device = setting.device
    batch = synthetic_clip(1, setting.train_frames, *setting.train_size, device)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-4)
    synchronize(device)
    reset_peak_memory(device)
    weights_gb = torch.cuda.memory_allocated(device) / GB if device.type == "cuda" else peak_rss_gb()
    training_step(model, criterion, optimizer, batch, device, setting.dtype)
    step, seconds = timed(lambda: training_step(model, criterion, optimizer, batch, device, setting.dtype), device)
    result = {"frames": setting.train_frames, "size": list(setting.train_size), "gradient_checkpointing": True,
              "weights_gb": weights_gb, "peak_gb": peak_memory_gb(device), "step_s": seconds, **step}
    if device.type == "cuda":
        reserved = torch.cuda.max_memory_reserved(device) / GB
        result.update(peak_reserved_gb=reserved, reserved_over_allocated=reserved / result["peak_gb"],
                      allocator_retries=torch.cuda.memory_stats(device).get("num_alloc_retries", 0),
                      allocator_config=os.environ.get(ALLOCATOR_ENV, ""))
    return result


# --- ddp -------------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_worker(rank: int, world: int, backend: str, port: int, numel: int, result_path: str) -> None:
    """One rank of the ddp section; rank 0 writes the figures to ``result_path`` (JSON)."""
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Linear(1024, 1024), nn.GELU(), nn.Linear(1024, 1)).to(device)
        ddp = nn.parallel.DistributedDataParallel(mlp, device_ids=[rank] if device.type == "cuda" else None)
        inputs = torch.randn(64, 1024, generator=torch.Generator().manual_seed(rank)).to(device)
        ddp(inputs).square().mean().backward()
        grads = torch.cat([p.grad.flatten() for p in mlp.parameters()])
        high, low = grads.clone(), grads.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        buffer = torch.randn(numel, device=device)
        dist.all_reduce(buffer)  # warm-up: communicator setup
        times = [timed(lambda: dist.all_reduce(buffer), device)[1] for _ in range(5)]
        if rank == 0:
            median_s = sorted(times)[len(times) // 2]
            Path(result_path).write_text(json.dumps({
                "world_size": world, "backend": backend, "grads_equal_on_all_ranks": bool((high == low).all()),
                "allreduce_numel": numel, "allreduce_ms": median_s * 1000,
                "allreduce_algbw_gbps": numel * 4 / median_s / 1e9}))
    finally:
        dist.destroy_process_group()


def ddp_section(setting: Setting, trainable: int) -> dict:
    """The ddp figures; one rank runs in this process, several in spawned ones (one per GPU)."""
    world = setting.ddp_world or torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "ddp.json"
        worker_args = (world, setting.ddp_backend, free_port(), trainable, str(result_path))
        if world == 1:
            ddp_worker(0, *worker_args)
        else:
            mp.spawn(ddp_worker, args=worker_args, nprocs=world, join=True)
        return json.loads(result_path.read_text())


# --- main ------------------------------------------------------------------------------------------------------

def run_section(name: str, fn) -> dict:
    """fn()'s figures with the section's seconds; on an exception, its text instead (and the traceback)."""
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as error:  # noqa: BLE001 -- one failing section must not cost the others their GPU time
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}"}
    result["section_s"] = round(time.perf_counter() - start, 1)
    print(f"[{name}] {json.dumps(result)}", flush=True)
    return result


def build(setting: Setting):
    """(model, criterion, build seconds): full-size components on the GPU, the tiny offline set's on the dry run."""
    start = time.perf_counter()
    cfg = model_config(setting.dtype, gradient_checkpointing=True, config=setting.config)
    if setting.device.type == "cuda":
        model, criterion, _ = build_random_model(cfg, setting.device, setting.dtype)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_weights(Path(tmp), seed=0)
            model, criterion, _ = build_random_model(cfg, setting.device, setting.dtype, read_component_configs(tmp),
                                                     load_tokenizers(Path(tmp)))
    return model, criterion, time.perf_counter() - start


def environment(setting: Setting) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": setting.device.type,
            ALLOCATOR_ENV: os.environ.get(ALLOCATOR_ENV, "")}
    if setting.device.type == "cuda":
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if kernels.triton_module() is not None:
        import triton
        info["triton"] = triton.__version__
    return info


def main(argv=None) -> None:
    args = parse_args(argv)
    setting = DRY_RUN if args.dry_run else GPU
    if setting.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py: no CUDA device here (torch.cuda.is_available() is False); run it where "
                         "there is one, or pass --dry_run to check the script on the CPU.")
    # Read when the allocator first allocates, which nothing has done yet: what the training launchers set.
    os.environ.setdefault(ALLOCATOR_ENV, EXPANDABLE_SEGMENTS)
    start = time.perf_counter()
    summary = {"dry_run": args.dry_run, **environment(setting), "sections": {}}
    sections = summary["sections"]
    if "msda" in args.sections:
        sections["msda"] = run_section("msda", lambda: msda_section(setting, args))
    model_sections = [name for name in ("fps", "sentences", "train", "ddp") if name in args.sections]
    if model_sections:
        model, criterion, build_s = build(setting)
        summary["model_build_s"] = round(build_s, 1)
        summary["trainable_parameters"] = sum(p.numel() for p in trainable_parameters(model))
        model.eval()
        if "fps" in args.sections:
            sections["fps"] = run_section("fps", lambda: fps_section(model, setting, args))
        if "sentences" in args.sections:
            sections["sentences"] = run_section("sentences", lambda: sentences_section(model, setting, args))
        if "train" in args.sections:
            sections["train"] = run_section("train", lambda: train_section(model, criterion, setting))
        if "ddp" in args.sections:
            del model, criterion  # the ranks need the memory more
            sections["ddp"] = run_section("ddp", lambda: ddp_section(setting, summary["trainable_parameters"]))
    summary["total_s"] = round(time.perf_counter() - start, 1)
    failed = [name for name, result in sections.items() if "error" in result]
    summary["failed_sections"] = failed
    if args.json:
        print(json.dumps(summary))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
