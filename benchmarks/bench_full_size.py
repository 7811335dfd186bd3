"""One inference forward and one LoRA training step of the full-size HCD with random weights.

The paper's configuration (``configs/ytvos_hcd.yaml``: UNet3D 1.41 B with LoRA r = 16 on to_q/to_v, CLIP-ViT-H/14
vision, the ModelScope OpenCLIP-H text encoder, RoBERTa-base, d_model 256, 4 + 4 deformable layers) is built from
``configs/pretrained`` with random weights (``benchmarks/full_size.py``): it proves the full-size wiring with real
tensors, beyond the meta-device checks of ``bench_memory.py``. The pretrained components are built one at a time
and cast to ``--dtype`` before the next, so host memory peaks near their final size (~10.4 GB in float32).

1. inference: ``model.eval()``, one forward of a ``--frames``-frame ``--size``x``--size`` clip with one sentence
   under ``torch.inference_mode`` (VAE, CLIP, UNet, transformer, mask head, TCMR refiner);
2. training: ``model.train()``, one forward + backward + AdamW step on the same clip with a square target (the
   matcher, every loss of the criterion), LoRA and the other trainable parts receiving gradients.

Seconds are wall time of each phase; memory is the peak resident set of the process (``ru_maxrss``) after each
phase, and on CUDA also ``torch.cuda.max_memory_allocated``.

    python -m benchmarks.bench_full_size --device cpu --json      # ~10.4 GB of weights in float32
"""
import argparse
import json
import time

import torch


from benchmarks.full_size import (DTYPES, GB, autocast, build_random_model, model_config, peak_rss_gb,
                                  synthetic_clip, trainable_parameters, training_step)
from models.pretrained import parameter_counts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="dtype of the pretrained components' weights; bfloat16 also runs the forward under "
                             "bf16 autocast (default float32)")
    parser.add_argument("--frames", type=int, default=2, help="frames of the clip (default 2)")
    parser.add_argument("--size", type=int, default=256, help="side of the square frames, a multiple of 32 "
                                                              "(default 256)")
    parser.add_argument("--gradient_checkpointing", action="store_true",
                        help="recompute the UNet blocks in the backward pass of the training step")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the figures as the last line")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.size < 32 or args.size % 32:
        parser.error("--frames must be >= 1 and --size a multiple of 32")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_full_size.py: --device cuda but torch.cuda.is_available() is False.")
    cfg = model_config(args.dtype, gradient_checkpointing=args.gradient_checkpointing)

    start = time.perf_counter()
    model, criterion, components = build_random_model(cfg, device, args.dtype)
    figures = {"build_s": time.perf_counter() - start, "peak_rss_gb_after_build": peak_rss_gb()}
    samples, captions, targets = synthetic_clip(1, args.frames, args.size, args.size, device)

    model.eval()
    start = time.perf_counter()
    with torch.inference_mode(), autocast(device, args.dtype):
        outputs = model(samples, captions)
    figures["inference_s"] = time.perf_counter() - start
    figures["peak_rss_gb_after_inference"] = peak_rss_gb()
    masks = outputs["pred_masks"]
    if tuple(masks.shape) != (1, args.frames, args.size, args.size) or not torch.isfinite(masks).all():
        raise SystemExit(f"bench_full_size.py: the inference forward gave masks {tuple(masks.shape)} "
                         f"(finite: {bool(torch.isfinite(masks).all())}), expected (1, {args.frames}, {args.size}, "
                         f"{args.size}) and finite.")
    del outputs, masks

    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-4)
    start = time.perf_counter()
    step = training_step(model, criterion, optimizer, (samples, captions, targets), device, args.dtype)
    figures["train_step_s"] = time.perf_counter() - start
    figures["peak_rss_gb_after_train_step"] = peak_rss_gb()
    if device.type == "cuda":
        figures["cuda_max_allocated_gb"] = torch.cuda.max_memory_allocated(device) / GB
    if not (step["lora_grad_norm"] > 0 and torch.isfinite(torch.tensor(step["loss"]))):
        raise SystemExit(f"bench_full_size.py: the training step gave loss {step['loss']} and LoRA gradient norm "
                         f"{step['lora_grad_norm']}; expected finite and > 0.")

    counts = parameter_counts(components)
    trainable = sum(p.numel() for p in trainable_parameters(model))
    print(f"full-size HCD, random weights ({args.dtype}), {device.type}, {torch.get_num_threads()} threads: "
          f"{args.frames} frames of {args.size}x{args.size}, 1 sentence")
    for name, count in counts.items():
        print(f"  {name:<12}{count / 1e6:10.1f} M parameters")
    print(f"  {'trainable':<12}{trainable / 1e6:10.1f} M parameters (LoRA, projections, transformer, heads)")
    print(f"build {figures['build_s']:.1f} s | inference forward {figures['inference_s']:.1f} s | training step "
          f"{figures['train_step_s']:.1f} s (loss {step['loss']:.3f}, LoRA grad norm {step['lora_grad_norm']:.3g})")
    print(f"peak RSS: {figures['peak_rss_gb_after_build']:.2f} GB built, {figures['peak_rss_gb_after_inference']:.2f} "
          f"GB after inference, {figures['peak_rss_gb_after_train_step']:.2f} GB after the training step")
    if args.json:
        print(json.dumps({"device": device.type, "dtype": args.dtype, "threads": torch.get_num_threads(),
                          "frames": args.frames, "size": args.size,
                          "gradient_checkpointing": args.gradient_checkpointing,
                          "parameters": counts, "trainable_parameters": trainable, **step,
                          **{key: round(value, 3) for key, value in figures.items()}}))


if __name__ == "__main__":
    main()
