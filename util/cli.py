"""How the command-line entry points end: one line for an error in the user's input, a traceback for a bug."""
import sys
from collections.abc import Callable
from typing import NoReturn

from util.errors import UserInputError

# What the project raises about the files, folders, configs, checkpoints and flags it was given (DatasetFormatError,
# CheckpointError, ConfigError, VideoReadError, ... are UserInputErrors); the message names the input and what was
# expected. Any other ValueError is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, UserInputError)


def exit_on_user_error(main: Callable[[], int | None]) -> NoReturn:
    """Exit with ``main()``'s status (None counts as 0); a ``USER_ERRORS`` exception prints ``error: <message>``
    on stderr and exits with status 1. Other exceptions propagate (traceback, status 1)."""
    try:
        status = main()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
