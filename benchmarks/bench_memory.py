"""Estimated GPU training memory of the full-size HCD (no GPU and no weights needed).

    python -m benchmarks.bench_memory                      # T = 5, batch 1, 384x640 (360p padded), LoRA r = 16
    python -m benchmarks.bench_memory --json               # last line: {"total_gb": {...}, ...}

Method (every number is printed):

* **Parameters and optimizer**: the full-size model is built on the meta device (``build_pretrained_on_meta`` +
  ``build_model`` under ``torch.device("meta")``, ``configs/ytvos_hcd.yaml`` with ``frozen_dtype: bfloat16``):
  frozen weights count their own bytes (VAE/CLIP in bf16; the UNet base and RoBERTa stay fp32 because
  ``frozen_dtype`` does not cover them), trainable weights 16 bytes each (fp32 weight, fp32 gradient, AdamW's two
  fp32 moments).
* **Activations of the backbone** (UNet with LoRA, frame condition, pair projection, TCMR stem): the backbone runs
  in training mode on meta tensors of the real size, and a ``torch.autograd.graph.saved_tensors_hooks`` pack hook
  adds up the bytes of every distinct storage autograd keeps for the backward pass: exactly what stays alive
  between forward and backward, without allocating anything. The frozen text encoders are stubbed (they run
  under ``no_grad`` and keep nothing). With gradient checkpointing, ``torch.utils.checkpoint`` keeps only the
  block inputs and the backward recomputes one block at a time: the largest block's own saved tensors are added
  as the recomputation peak.
* **Activations of the rest** (input projections, deformable transformer, heads, TCMR refiner, losses excluded):
  the deformable attention needs real level sizes, so this part runs for real on the CPU, with the full-size
  head config on top of a stand-in backbone that returns the real feature shapes, and the same hook
  (distinct storages by data pointer).
* **AMP bf16**: the hook counts fp32 activations (meta and CPU here run without autocast). Under autocast the
  tensors saved by convolutions, linears and attention are bf16 and those of the normalisations stay fp32, so the
  AMP activations lie between half the fp32 count (lower bound) and the fp32 count (upper bound); both are given.

Not counted: the CUDA context and cuDNN workspaces (~0.5-1 GB), allocator fragmentation, the transient buffers
of the backward pass of a single op, the frozen encoders' short-lived bf16 activations (the VAE at 384x640 peaks
at a few hundred MB per frame batch before the UNet runs). Measured numbers need a GPU: this task has none.
"""
import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]

from models import build_model
from models.backbone.visual_backbone import BackboneOutput, resize_mask
from models.pretrained import build_pretrained_on_meta, load_pretrained
from testing.tiny_weights import build_tiny_weights
from util.config import load_config
from util.nested_tensor import NestedTensor

CONFIG = REPO / "configs" / "ytvos_hcd.yaml"
GB = 2 ** 30
TARGET_GB = 24
CAPTION = "a person in a red jacket riding a bike to the left"
TRAINABLE_BYTES = 16  # fp32 weight + fp32 gradient + AdamW exp_avg + exp_avg_sq


def full_config(lora_rank: int, gradient_checkpointing: bool) -> dict:
    cfg = load_config(CONFIG)
    backbone = cfg["model"]["backbone"]
    backbone.update(unet_lora_rank=lora_rank, frozen_dtype="bfloat16", gradient_checkpointing=gradient_checkpointing)
    return cfg


class SavedTensors:
    """Adds up the bytes of the distinct storages that autograd saves for the backward pass while active.

    Storages are told apart by their ``StorageImpl`` (works on meta tensors too, where every data pointer is 0).
    ``scope`` names the part of the model being run; bytes are also kept per scope.
    """

    def __init__(self):
        self.storages: dict[int, int] = {}
        self.by_scope: dict[str, int] = {}
        self.scope = "other"
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in self.storages:
            self.storages[storage._cdata] = storage.nbytes()
            self.by_scope[self.scope] = self.by_scope.get(self.scope, 0) + storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)


def meta_model(cfg: dict, tokenizers_dir: Path):
    components = build_pretrained_on_meta()
    tiny = load_pretrained(tokenizers_dir)  # only its real CLIP tokenizer is used
    components.clip_tokenizer = tiny.clip_tokenizer
    components.roberta_tokenizer = tiny.roberta_tokenizer
    with torch.device("meta"):
        model, _ = build_model(cfg, components)
    return model


def parameter_memory(model: nn.Module) -> dict[str, float]:
    """GB of frozen weights per top-level part, and of trainable weights + gradients + AdamW states."""
    groups: dict[str, float] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key, size = "trainable (weights + grads + AdamW)", TRAINABLE_BYTES * parameter.numel()
        else:
            part = ("unet" if ".unet." in name else "vae" if ".vae." in name else "clip_vision" if "clip_vision" in name
                    else "clip_text" if "clip_text" in name else "roberta" if "roberta" in name else "other")
            key, size = f"frozen {part} ({str(parameter.dtype).removeprefix('torch.')})", \
                parameter.numel() * parameter.element_size()
        groups[key] = groups.get(key, 0.0) + size / GB
    return groups


def backbone_activations(model: nn.Module, frames: int, height: int, width: int) -> dict:
    """Saved-for-backward GB of the backbone on meta, per UNet block; see the module docstring."""
    backbone = model.backbone.train()
    text_shape = (backbone.frozen.text_length, backbone.frozen.clip_text.config.hidden_size)
    # the frozen CLIP text encoder keeps nothing for the backward pass, and its masking code reads values
    backbone.frozen.encode_text = lambda captions: torch.zeros(len(captions), *text_shape, device="meta")
    unet = backbone.unet_features.unet
    blocks = {f"down{i}": b for i, b in enumerate(unet.down_blocks)} | {"mid": unet.mid_block} | \
             {f"up{i}": b for i, b in enumerate(unet.up_blocks[:3])}
    samples = NestedTensor(torch.zeros(1, frames, 3, height, width, device="meta"),
                           torch.zeros(1, frames, height, width, dtype=torch.bool, device="meta"))
    with SavedTensors() as saved:
        for name, block in blocks.items():
            block.register_forward_pre_hook(lambda *_, name=name: setattr(saved, "scope", name))
            block.register_forward_hook(lambda *_: setattr(saved, "scope", "other"))
        backbone(samples, [CAPTION])
    return {"total_gb": saved.total / GB, "largest_block_gb": max(saved.by_scope.get(n, 0) for n in blocks) / GB}


def heads_over_stand_in_backbone(cfg: dict, tiny_weights: Path, frames: int, height: int, width: int,
                                 requires_grad: bool) -> tuple[nn.Module, NestedTensor]:
    """The model of ``cfg`` on the CPU whose backbone hands back fixed random features of the configured widths
    (so that everything after the backbone runs at full size without it), and an all-valid clip of ``frames``
    frames for it; with ``requires_grad`` the features take part in autograd, as the backbone's output would."""
    cfg = dict(cfg, model=dict(cfg["model"], backbone=dict(cfg["model"]["backbone"], clip_image_size=32,
                                                            frozen_dtype="float32")))
    torch.manual_seed(0)
    model, _ = build_model(cfg, load_pretrained(tiny_weights))
    channels = model.backbone.num_channels
    mask = torch.zeros(frames, height, width, dtype=torch.bool)
    features = [torch.randn(frames, c, height // s, width // s, requires_grad=requires_grad)
                for c, s in zip(channels, (8, 16, 32))]
    stride4 = torch.randn(frames, model.backbone.stride4_channels, height // 4, width // 4,
                          requires_grad=requires_grad)
    stand_in = BackboneOutput(features=features, masks=[resize_mask(mask, f.shape[-2:]) for f in features],
                              stride4=stride4, stride4_mask=resize_mask(mask, stride4.shape[-2:]))
    model.backbone.forward = lambda samples, captions: stand_in
    return model, NestedTensor(torch.zeros(1, frames, 3, height, width), mask[None])


def head_activations(cfg: dict, tiny_weights: Path, frames: int, height: int, width: int) -> float:
    """Saved-for-backward GB of everything after the backbone, on the CPU (see the module docstring)."""
    model, samples = heads_over_stand_in_backbone(cfg, tiny_weights, frames, height, width, requires_grad=True)
    model.train()
    with SavedTensors() as saved:
        model(samples, [CAPTION])  # the slot of best score is refined: as many tensors as the matched one
    return saved.total / GB


def estimate(args) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        build_tiny_weights(tiny, seed=0)
        head_gb = head_activations(full_config(args.lora_rank, False), tiny, args.frames, args.height, args.width)
        largest_block_gb = 0.0  # measured without checkpointing: checkpoint hides the blocks' saved tensors
        for checkpointing in (False, True):
            model = meta_model(full_config(args.lora_rank, checkpointing), tiny)
            params = parameter_memory(model)
            acts = backbone_activations(model, args.frames, args.height, args.width)
            largest_block_gb = max(largest_block_gb, acts["largest_block_gb"])
            recompute_gb = largest_block_gb if checkpointing else 0.0
            rows[checkpointing] = {"params": params, "backbone_saved_gb": acts["total_gb"], "recompute_gb": recompute_gb,
                                   "activations_fp32_gb": acts["total_gb"] + recompute_gb + head_gb}
    return {"rows": rows, "head_saved_gb": head_gb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5, help="frames per clip T (default 5)")
    parser.add_argument("--height", type=int, default=384, help="padded frame height (default 384: 360p padded)")
    parser.add_argument("--width", type=int, default=640, help="padded frame width (default 640)")
    parser.add_argument("--lora_rank", type=int, default=16, help="UNet LoRA rank (default 16)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line at the end")
    args = parser.parse_args()
    if args.height % 32 or args.width % 32:
        parser.error("--height and --width must be multiples of 32 (the padded size)")

    result = estimate(args)
    print(f"full-size HCD, batch 1, T={args.frames}, {args.height}x{args.width}, LoRA r={args.lora_rank}, "
          f"frozen VAE/CLIP in bf16, AMP bf16")
    summary = {}
    for checkpointing, row in result["rows"].items():
        label = "with" if checkpointing else "without"
        params_gb = sum(row["params"].values())
        low, high = params_gb + row["activations_fp32_gb"] / 2, params_gb + row["activations_fp32_gb"]
        print(f"\n{label} UNet gradient checkpointing")
        for key, value in sorted(row["params"].items()):
            print(f"  {key:<46}{value:8.2f} GB")
        print(f"  {'backbone saved activations (fp32)':<46}{row['backbone_saved_gb']:8.2f} GB")
        if checkpointing:
            print(f"  {'+ recompute of the largest UNet block (fp32)':<46}{row['recompute_gb']:8.2f} GB")
        print(f"  {'transformer/heads/refiner activations (fp32)':<46}{result['head_saved_gb']:8.2f} GB")
        print(f"  total with AMP bf16: {low:.1f} - {high:.1f} GB (activations half to all fp32) vs the {TARGET_GB} GB "
              f"target: {'fits' if high <= TARGET_GB else 'fits only at the lower bound' if low <= TARGET_GB else 'does not fit'}")
        summary["with_checkpointing" if checkpointing else "without_checkpointing"] = {
            "params_gb": params_gb, "activations_fp32_gb": row["activations_fp32_gb"],
            "total_low_gb": low, "total_high_gb": high}
    print("\nnot counted: CUDA context/workspaces (~0.5-1 GB), fragmentation, per-op transient buffers; no GPU here "
          "to measure")
    if args.json:
        print(json.dumps({"target_gb": TARGET_GB, "frames": args.frames, "size": [args.height, args.width],
                          "lora_rank": args.lora_rank, **summary}))


if __name__ == "__main__":
    main()
