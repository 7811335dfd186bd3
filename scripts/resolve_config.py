"""Print the config a run will use: a YAML file, or the config stored with a checkpoint, with main.py's overrides.

    python -m scripts.resolve_config --config configs/ytvos_hcd.yaml --output_dir outputs/x --set train.lr=1e-4
    python -m scripts.resolve_config --checkpoint outputs/ytvos_hcd/last.pth --data_root data/ref-youtube-vos

Used by ``scripts/dist_*.sh`` under ``DRY_RUN=1``. A YAML file's ``_base_`` files (``configs/base/``) are merged
in and the result is checked against the schema (``util/config_schema.py``) and completed with its defaults, as
``main.py`` does: what is printed is the complete, standalone config that ``main.py`` saves as ``config.yaml``
(no ``_base_``). A checkpoint's config is completed the same way (keys added since it was saved take their
defaults). The dedicated flags of ``main.py`` that set config keys (``util.config.FLAG_TO_KEY``: --data_root,
--weights, --output_dir, --epochs, --lr, --max_steps, ...) and ``--set key=value`` are applied as ``main.py``
applies them; any other flag is ignored. Only ``util.config`` (and torch, to read a ``.pth``) is imported, so this
is quick.
"""
import argparse
import sys
from pathlib import Path

import yaml

from util.config import FLAG_TO_KEY, apply_overrides, load_config, parse_assignment, upgrade_saved_config


def yaml_value(text: str):
    """A flag's value typed as YAML would type it ("3" -> 3, "1e-4" -> 0.0001, "data/x" -> "data/x")."""
    return parse_assignment(f"value={text}")[1]


def stored_config(path: Path) -> dict | None:
    """The config saved with a main.py checkpoint (.pth) or a Predictor.save_pretrained folder; None if absent."""
    if path.is_dir():
        return load_config(path / "config.yaml")
    if not path.is_file():
        return None
    from util.checkpoint import load_checkpoint  # torch only when a checkpoint is read

    return upgrade_saved_config(load_checkpoint(path)["config"], f"the config saved in {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # other flags of the command are ignored, never guessed
    parser.add_argument("--config", help="YAML config file (configs/*.yaml); takes precedence over a checkpoint's")
    parser.add_argument("--checkpoint", "--resume", dest="checkpoint",
                        help="a main.py checkpoint (.pth) or save_pretrained folder whose stored config is used")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key, as main.py")
    for flag, key in FLAG_TO_KEY.items():
        parser.add_argument(f"--{flag}", type=yaml_value, help=f"sets the config key {key}, as main.py")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, _ = build_parser().parse_known_args(argv)
    if args.config:
        cfg, source = load_config(args.config), args.config
    elif args.checkpoint:
        cfg, source = stored_config(Path(args.checkpoint)), f"the config stored in {args.checkpoint}"
        if cfg is None:
            print(f"# config: the one stored in {args.checkpoint}, which does not exist yet")
            return 0
    else:
        print("resolve_config.py: give --config or --checkpoint", file=sys.stderr)
        return 2
    print(f"# resolved config: {source} with the command's overrides")
    print(yaml.safe_dump(apply_overrides(cfg, args), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
