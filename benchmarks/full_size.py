"""The full-size HCD with random weights, a synthetic clip and a training step, for the full-size benchmarks.

``bench_full_size.py`` (CPU) and ``bench_gpu.py`` build the paper's configuration (``configs/ytvos_hcd.yaml``:
d_model 256, LoRA on the UNet) over the pretrained components of ``configs/pretrained`` (UNet3D 1.41 B,
CLIP-ViT-H/14 vision, the ModelScope OpenCLIP-H text encoder, RoBERTa-base, the SD VAE) with random weights: no
download. The tokenizers are the real CLIP BPE and the small RoBERTa BPE of the tiny offline set
(``testing.tiny_weights``), whose ids all fall inside the full-size vocabularies.
"""
import contextlib
import copy
import resource
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPTokenizer

from engine import to_float32, weighted_losses
from models import build_model
from models.pretrained import build_pretrained_from_configs, read_component_configs
from testing.tiny_weights import build_tiny_weights
from util.config import load_config
from util.nested_tensor import NestedTensor

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ytvos_hcd.yaml"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CAPTIONS = ["a person in a red jacket riding a bike to the left", "the dog running behind the bike",
            "the car parked on the right", "the small bird on the fence"]
GB = 2 ** 30


def load_tokenizers(weights_dir: Path) -> tuple:
    """(CLIP tokenizer, RoBERTa tokenizer) of a weights folder in the ``weight/`` layout."""
    return (CLIPTokenizer.from_pretrained(Path(weights_dir) / "tokenizer", local_files_only=True),
            AutoTokenizer.from_pretrained(Path(weights_dir) / "roberta", local_files_only=True))


def tiny_tokenizers() -> tuple:
    """The tokenizers of the tiny offline set, built in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_weights(Path(tmp), seed=0)
        return load_tokenizers(Path(tmp))


def one_layer_configs() -> dict[str, dict]:
    """The full-size component configs with one layer per UNet block, VAE block and encoder: every width of the
    paper's model at a fraction of its depth (1.1 B parameters instead of 2.6 B)."""
    configs = copy.deepcopy(read_component_configs())
    configs["unet"]["layers_per_block"] = 1
    configs["vae"]["layers_per_block"] = 1
    for name in ("text_encoder", "roberta"):
        configs[name]["num_hidden_layers"] = 1
    configs["clip"]["vision_config"]["num_hidden_layers"] = 1
    return configs


def model_config(dtype: str, lora_rank: int = 16, gradient_checkpointing: bool = False, config: Path = CONFIG) -> dict:
    """``config`` (the paper's by default) with the frozen encoders held in ``dtype`` and the given LoRA and
    gradient checkpointing."""
    cfg = load_config(config)
    cfg["model"]["backbone"].update(frozen_dtype=dtype, unet_lora_rank=lora_rank,
                                    gradient_checkpointing=gradient_checkpointing)
    return cfg


def build_random_model(cfg: dict, device: torch.device, dtype: str, component_configs: dict | None = None,
                       tokenizers: tuple | None = None):
    """(model, criterion, components): ``cfg``'s HCD on random pretrained components, on ``device``.

    The pretrained components (``component_configs``, by default the full-size ones) are built one at a time
    directly on ``device`` in ``dtype``; the trainable parts (LoRA, projections, transformer, heads) in float32.
    tokenizers: (CLIP, RoBERTa), by default :func:`tiny_tokenizers`.
    """
    clip_tokenizer, roberta_tokenizer = tokenizers or tiny_tokenizers()
    torch.manual_seed(0)
    components = build_pretrained_from_configs(component_configs or read_component_configs(), device=device,
                                               dtype=DTYPES[dtype], clip_tokenizer=clip_tokenizer,
                                               roberta_tokenizer=roberta_tokenizer)
    model, criterion = build_model(copy.deepcopy(cfg), components)
    return model.to(device), criterion.to(device), components


def synthetic_clip(num_clips: int, num_frames: int, height: int, width: int, device: torch.device,
                   captions_per_clip: int = 1, seed: int = 0) -> tuple[NestedTensor, list[str], list[dict]]:
    """Random ImageNet-normalised frames [B, T, 3, H, W], B·K captions and one square target per caption."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(num_clips, num_frames, 3, height, width, generator=generator)
    mask = torch.zeros(num_clips, num_frames, height, width, dtype=torch.bool)
    targets = []
    for index in range(num_clips * captions_per_clip):
        masks = torch.zeros(num_frames, height, width)
        top, left, side = height // 4, width // 4 + index * width // 16, max(height // 4, 1)
        masks[:, top:top + side, left:left + side] = 1
        box = torch.tensor([(left + side / 2) / width, (top + side / 2) / height, side / width, side / height])
        targets.append({"masks": masks.to(device), "boxes": box.repeat(num_frames, 1).to(device),
                        "valid": torch.ones(num_frames, dtype=torch.long, device=device)})
    captions = [CAPTIONS[k % len(CAPTIONS)] for _ in range(num_clips) for k in range(captions_per_clip)]
    return NestedTensor(frames, mask).to(device), captions, targets


def autocast(device: torch.device, dtype: str):
    """bf16 autocast when the components are bf16 (their float32 neighbours then meet them in bf16)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def training_step(model, criterion, optimizer, batch, device: torch.device, dtype: str) -> dict:
    """One optimizer step on ``batch``: the weighted loss and the norm of the LoRA gradients (both floats)."""
    samples, captions, targets = batch
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, dtype):
        outputs = model(samples, captions, targets)
    total = sum(weighted_losses(criterion(to_float32(outputs), targets), criterion.weight_dict).values())
    total.backward()
    lora = [p.grad.float().norm() for name, p in model.named_parameters() if "lora_" in name and p.grad is not None]
    optimizer.step()
    return {"loss": total.item(), "lora_grad_norm": torch.stack(lora).norm().item() if lora else 0.0}


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``), GB."""
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GB
