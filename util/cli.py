"""How the command-line entry points end: one line for an error in the user's input, a traceback for a bug."""
import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from util.errors import UserInputError

# What the project raises about the files, folders, configs, checkpoints and flags it was given (DatasetFormatError,
# CheckpointError, ConfigError, VideoReadError, ... are UserInputErrors); the message names the input and what was
# expected. Any other ValueError is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, UserInputError)


def add_device_argument(parser: argparse.ArgumentParser, what: str = "the model runs") -> None:
    """``--device cpu|cuda``, the same in every entry point; left out, ``resolve_device`` picks the GPU if any."""
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help=f"where {what} (each torchrun process takes GPU LOCAL_RANK); default: cuda when a GPU is "
                             f"visible, else cpu")


def resolve_device(device: str | None) -> str:
    """``device`` as given, or for None "cuda" when torch sees a GPU and "cpu" otherwise. torch is imported here,
    not at parse time, so that the modes that run no model (scoring, zip checks) never load it."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def exit_on_user_error(main: Callable[[], int | None]) -> NoReturn:
    """Exit with ``main()``'s status (None counts as 0); a ``USER_ERRORS`` exception prints ``error: <message>``
    on stderr and exits with status 1. Other exceptions propagate (traceback, status 1)."""
    try:
        status = main()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
