"""FLOPs of one frame of the full-size HCD at inference, by part, counted on the CPU without running the model on a
GPU; the share of a one-sentence call that K sentences of a clip share, and the speed-up cap it sets.

    python -m benchmarks.frame_flops --json        # T = 36 frames of 640x384 (short side 360, padded), one sentence

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions and attention, at
2 FLOPs a multiply-add; elementwise work, normalisation and the deformable sampling are not counted, a few per
cent at most). The backbone runs on the meta device at the real size (no memory, no arithmetic): the frozen VAE
encoder and CLIP-H vision, the UNet stem and walk, the TCMR stride-4 stem, the frame condition and the pair
projection; the CLIP text encoder (77 tokens, once per sentence, not per frame) is left out. The rest (input
projections, deformable transformer, heads, mask head, TCMR refiner) reads level sizes and runs for real on the
CPU over a stand-in backbone with the real feature shapes, on ``--head_frames`` frames, and is scaled to T frames
(it works frame by frame).

``shared_fraction``: the FLOPs of the sentence-independent stages (VAE, CLIP vision, UNet stem, TCMR stem) over
those of a one-sentence call; ``cap_k``: ``K / (f + K (1 - f))``, the most that K batched sentences can gain over K
calls where time follows FLOPs (``benchmarks/sentence_batching.py``).
"""
import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_memory import CAPTION, full_config, heads_over_stand_in_backbone, meta_model
from benchmarks.sentence_batching import amdahl_cap
from testing.tiny_weights import build_tiny_weights
from util.nested_tensor import NestedTensor

SHARED = ("vae_encoder", "clip_vision", "unet_stem", "tcmr_stem")


def flops(fn, model: torch.nn.Module) -> int:
    """FLOPs that ``fn()`` runs (FlopCounterMode's count). ``model``'s parameters do not require gradients
    meanwhile: the counter's module tracker fails on a parameter handed to a module as an argument (the query
    embedding to the transformer) when no graph is recorded."""
    requires_grad = [parameter.requires_grad for parameter in model.parameters()]
    model.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        for parameter, required in zip(model.parameters(), requires_grad):
            parameter.requires_grad_(required)
    return counter.get_total_flops()


def backbone_flops(model, frames: int, height: int, width: int) -> dict[str, int]:
    """FLOPs of the backbone's parts for one clip and one sentence, on the meta device."""
    backbone = model.backbone.eval()
    text_shape = (backbone.frozen.text_length, backbone.frozen.clip_text.config.hidden_size)
    backbone.frozen.encode_text = lambda captions: torch.zeros(len(captions), *text_shape, device="meta")
    tensors = torch.zeros(1, frames, 3, height, width, device="meta")
    mask = torch.zeros(1, frames, height, width, dtype=torch.bool, device="meta")
    flat = tensors[0]
    with torch.no_grad():
        encoding = backbone.encode_frames(tensors, mask)
        parts = {"vae_encoder": flops(lambda: backbone.frozen.encode_latents(flat), model),
                 "clip_vision": flops(lambda: backbone.frozen.encode_images(flat), model),
                 "unet_stem": flops(lambda: backbone.unet_features.stem(encoding.latents), model),
                 "tcmr_stem": flops(lambda: backbone.temporal_stem(encoding.frames), model)}
        whole = flops(lambda: backbone(NestedTensor(tensors, mask), [CAPTION]), model)
    parts["unet_walk_condition_projection"] = whole - sum(parts.values())
    return parts


def head_flops(cfg: dict, tiny_weights: Path, frames: int, height: int, width: int) -> int:
    """FLOPs of everything after the backbone for ``frames`` frames, on the CPU over a stand-in backbone."""
    model, samples = heads_over_stand_in_backbone(cfg, tiny_weights, frames, height, width, requires_grad=False)
    model.eval()
    with torch.no_grad():
        return flops(lambda: model(samples, [CAPTION]), model)


def count(frames: int, height: int, width: int, head_frames: int, sentences: int) -> dict:
    """Per-frame FLOPs by part, their total, the shared fraction of a one-sentence call and the cap for K."""
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        build_tiny_weights(tiny, seed=0)
        cfg = full_config(lora_rank=16, gradient_checkpointing=False)
        parts = backbone_flops(meta_model(cfg, tiny), frames, height, width)
        parts["transformer_heads_refiner"] = head_flops(cfg, tiny, head_frames, height, width) * frames // head_frames
    per_frame = {name: value / frames for name, value in parts.items()}
    total = sum(per_frame.values())
    shared = sum(per_frame[name] for name in SHARED) / total
    return {"frames": frames, "size": [height, width], "flops_per_frame": total, "flops_per_frame_by_part": per_frame,
            "shared_fraction": shared, "sentences": sentences, "cap": amdahl_cap(shared, sentences)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=36, help="frames of the clip T (default 36)")
    parser.add_argument("--height", type=int, default=384, help="padded frame height (default 384: 360 padded)")
    parser.add_argument("--width", type=int, default=640, help="padded frame width (default 640)")
    parser.add_argument("--head_frames", type=int, default=2,
                        help="frames the transformer, heads and refiner really run on (CPU), scaled to T (default 2)")
    parser.add_argument("--sentences", type=int, default=4, help="sentences K of the cap (default 4)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    args = parser.parse_args(argv)
    if args.height % 32 or args.width % 32 or min(args.frames, args.head_frames, args.sentences) < 1:
        parser.error("--height and --width must be multiples of 32, the counts at least 1")
    result = count(args.frames, args.height, args.width, args.head_frames, args.sentences)
    print(f"full-size HCD, T = {args.frames}, {args.height}x{args.width}, one sentence: GFLOP per frame")
    for name, value in result["flops_per_frame_by_part"].items():
        print(f"  {name:<34}{value / 1e9:10.1f}")
    print(f"  {'total':<34}{result['flops_per_frame'] / 1e9:10.1f}")
    print(f"shared by the sentences of a clip: {result['shared_fraction']:.1%} of a one-sentence call; "
          f"cap for K = {args.sentences}: x{result['cap']:.2f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
