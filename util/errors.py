"""The base class of every error about what a user gave the project: a file, a folder, a config, a checkpoint, a
sentence. The entry points print such an error as one line (``util/cli.py``); any other exception is a bug and
keeps its traceback."""


class UserInputError(ValueError):
    """Input that does not fit what was expected; the message names the input (path, video, frame, key) and what
    to do about it."""
