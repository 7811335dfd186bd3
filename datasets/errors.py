"""The error raised when files on disk do not match the dataset format a loader expects."""
from util.errors import UserInputError


class DatasetFormatError(UserInputError):
    """A dataset file exists but its content is not in the expected format (broken json, corrupt image,
    annotation that does not match its frame, ...). The message names the file, video and frame."""
