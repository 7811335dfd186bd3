"""The command-line pieces the inference entry points share: the flags that load a model, the data / split /
output flags, and the clip flags' check. ``inference_ytvos.py``, ``inference_davis.py``, ``inference_mevis.py``,
``demo.py`` and ``app.py`` build their parsers from them, so a flag means the same everywhere."""
import argparse

from inference.clips import clip_problem
from util.amp import INFERENCE_AMP
from util.cli import add_device_argument, resolve_device
from util.config import load_config


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that load a trained model (``load_predictor``)."""
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="trained model: a checkpoint of main.py (.pth, e.g. <output_dir>/last.pth) or a folder "
                             "written by Predictor.save_pretrained (config.yaml + model.safetensors)")
    parser.add_argument("--config", help="YAML config to use instead of the one stored with --checkpoint (its "
                                         "model must match the stored weights)")
    parser.add_argument("--weights", help="folder of the pretrained components (default: the config's `weights`)")
    add_device_argument(parser)
    parser.add_argument("--amp", default="none", choices=INFERENCE_AMP,
                        help="bf16 autocast of the forward pass (for CUDA)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model's heavy modules (UNet, VAE encoder, CLIP vision, mask head, "
                             "TCMR; inference/compilation.py): the first clip waits for the compilation (about a "
                             "minute at full size), later clips run faster. Default: on for CUDA, off on the CPU "
                             "(where inductor compiles C++ for minutes)")


def add_data_arguments(parser: argparse.ArgumentParser, data_root: str, output_dir: str, clip_len: str,
                       split: str = "split of --data_root to predict (default: valid)",
                       split_choices: tuple[str, ...] | None = None, split_default: str = "valid") -> None:
    """``--data_root``, ``--split``, ``--output_dir`` and ``--clip_len`` with each script's help text (what the
    folders hold differs between the datasets; the flags do not)."""
    parser.add_argument("--data_root", help=data_root)
    parser.add_argument("--split", default=split_default, choices=split_choices, help=split)
    parser.add_argument("--output_dir", help=output_dir)
    parser.add_argument("--clip_len", type=int, help=clip_len)


def load_predictor(args: argparse.Namespace):
    """The ``Predictor`` that ``add_model_arguments``' flags describe."""
    from inference.predictor import Predictor  # torch and the model only for the modes that run it

    cfg = load_config(args.config) if args.config else None
    device = resolve_device(args.device)
    return Predictor.load(args.checkpoint, args.weights, cfg, device, args.amp,
                          compile=compile_by_default(args.compile, device))


def compile_by_default(flag: bool | None, device: str) -> bool:
    """``--compile`` / ``--no-compile`` when given, else on for CUDA devices ("cuda", "cuda:1") only."""
    return flag if flag is not None else device.split(":")[0] == "cuda"


def clip_flags_problem(clip_len: int | None, overlap: int = 0) -> str | None:
    """Why ``--clip_len`` / ``--overlap`` cannot work (``inference.clips``' rule, in the flags' names), or None."""
    return clip_problem(clip_len, overlap, names=("--clip_len", "--overlap"))
