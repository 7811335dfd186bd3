"""Build HCD from a config and print its parameter counts.

    python -m scripts.model_summary --config configs/ytvos_hcd.yaml --meta

With ``--meta`` the model is built on the ``meta`` device from the full-size component configs stored in
``configs/pretrained`` (no weights needed); without it the pretrained folder named by the config (or
``--weights``) is loaded. The last line printed is one JSON object of parameter counts.
"""
import argparse
import json

import torch

from models import build_model
from models.pretrained import build_pretrained_on_meta, load_pretrained, parameter_counts
from util.config import load_config


def summary_counts(model: torch.nn.Module, components) -> dict[str, int]:
    """Parameter counts of the pretrained components and of the whole model."""
    pretrained = parameter_counts(components)
    return {
        "unet": pretrained["unet"],
        "vae": pretrained["vae"],
        "clip_vision": pretrained["clip_vision"],
        "clip_text": pretrained["clip_text"],
        "roberta": pretrained["roberta"],
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
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
    counts = summary_counts(model, components)
    width = max(len(name) for name in counts)
    for name, value in counts.items():
        print(f"{name:<{width}}  {value:>15,}")
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
