"""Build HCD from a config and print its parameter counts.

    python -m models.summary --config configs/ytvos_hcd.yaml --meta

With ``--meta`` the model is built on the ``meta`` device from the full-size component configs stored in
``configs/pretrained`` (no weights needed); without it the pretrained folder named by the config (or
``--weights``) is loaded. The last line printed is one JSON object of parameter counts.
"""
import argparse
import json

import torch

from models import build_model
from models.pretrained import build_pretrained_on_meta, load_pretrained
from util.config import load_config


def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_without_lora(module: torch.nn.Module) -> int:
    """Parameters of a pretrained module, not counting the LoRA adapters injected into it."""
    return sum(p.numel() for name, p in module.named_parameters() if "lora_" not in name)


def parameter_counts(model: torch.nn.Module, components) -> dict[str, int]:
    """Parameter counts of the pretrained components and of the whole model."""
    return {
        "unet": count_without_lora(components.unet),
        "vae": count(components.vae),
        "clip_vision": count(components.clip_vision),
        "clip_text": count(components.clip_text),
        "roberta": count(components.roberta),
        "trainable": count(model, trainable_only=True),
        "total": count(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config of the model (configs/*.yaml)")
    parser.add_argument("--meta", action="store_true",
                        help="build on the meta device from configs/pretrained: no weights, no memory")
    parser.add_argument("--weights", default=None,
                        help="pretrained folder to load when not --meta (default: the config's `weights`)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    if args.meta:
        components = build_pretrained_on_meta()
        with torch.device("meta"):
            model, _ = build_model(cfg, components)
    else:
        components = load_pretrained(args.weights or cfg["weights"])
        model, _ = build_model(cfg, components)
    counts = parameter_counts(model, components)
    width = max(len(name) for name in counts)
    for name, value in counts.items():
        print(f"{name:<{width}}  {value:>15,}")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
