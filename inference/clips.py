"""Clip windows: how a video of T frames is cut into forward passes of ``clip_len`` frames that overlap by
``overlap`` frames. ``Predictor.stream`` follows these windows, the scripts check their flags with the same rule,
and ``app.py`` counts them for its progress bar; nothing here imports torch."""

from util.errors import UserInputError


def clip_problem(clip_len: int | None, overlap: int = 0,
                 names: tuple[str, str] = ("clip_len", "overlap")) -> str | None:
    """Why ``clip_len`` / ``overlap`` cannot work, or None: ``clip_len`` None (whole video, ``overlap`` 0) or
    ``clip_len >= 1`` and ``0 <= overlap < clip_len``. ``names`` are the words used for them (flags: ``--clip_len``)."""
    clip, over = names
    if clip_len is None:
        return None if overlap == 0 else f"{over} needs {clip} (clips to overlap), got {clip}=None, {over}={overlap}"
    if clip_len < 1 or not 0 <= overlap < clip_len:
        return f"need {clip} >= 1 and 0 <= {over} < {clip}, got {clip}={clip_len}, {over}={overlap}"
    return None


def check_clip(clip_len: int | None, overlap: int) -> None:
    """ValueError unless ``clip_len`` is None (whole video, ``overlap`` 0) or ``clip_len >= 1`` and
    ``0 <= overlap < clip_len``."""
    problem = clip_problem(clip_len, overlap)
    if problem:
        raise UserInputError(problem)


def clip_windows(num_frames: int, clip_len: int | None, overlap: int = 0) -> list[tuple[int, int]]:
    """``(start, stop)`` frame ranges of consecutive clips that cover ``num_frames`` frames.

    Each clip has ``clip_len`` frames (the last one may be shorter) and starts ``clip_len - overlap`` frames after
    the previous one; ``clip_len`` None gives the whole video as one clip. ``clip_windows(5, 3, 1)`` is
    ``[(0, 3), (2, 5)]``.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    check_clip(clip_len, overlap)
    if clip_len is None:
        return [(0, num_frames)]
    windows, start = [], 0
    while True:
        stop = min(start + clip_len, num_frames)
        windows.append((start, stop))
        if stop == num_frames:
            return windows
        start = stop - overlap


def handing_clip(frame_index: int, num_frames: int, clip_len: int, overlap: int) -> tuple[int, int]:
    """``(k, n)``: ``Predictor.stream`` hands frame ``frame_index`` back after clip ``k`` (1-based) of the ``n``
    clips of ``clip_windows(num_frames, clip_len, overlap)``: clip k ends the frames before the next clip's start,
    the last clip all that remain."""
    windows = clip_windows(num_frames, clip_len, overlap)
    for number, (_, stop) in enumerate(windows, start=1):
        handed = stop if number == len(windows) else stop - overlap
        if frame_index < handed:
            return number, len(windows)
    raise ValueError(f"frame {frame_index} is not one of the {num_frames} frames")
