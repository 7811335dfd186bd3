"""Reading a video (a file PyAV decodes, or a folder of frames) and writing mp4 (PyAV) and GIF (PIL) files.

Frames are uint8 RGB arrays ``[H, W, 3]``. ``open_video`` reads lazily, so that a long video never has to fit in
memory; the writers stream to a temporary file in the destination folder and rename it at ``close()``, so a
destination is either absent or complete.
"""
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from util.atomic_write import atomic_write
from util.errors import UserInputError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_FOLDER_FPS = 10.0


class VideoReadError(UserInputError):
    """A video file or frame folder that cannot be read as a video."""


@dataclass(frozen=True)
class VideoSource:
    """A video to read: a file (``frame_files`` None) or the sorted frames of a folder.

    ``fps``: the file's average frame rate (``DEFAULT_FOLDER_FPS`` for a folder or a file without one);
    ``num_frames``: the frame count when known up front (a folder, or a file whose header states it), else None.
    """

    path: Path
    fps: float
    num_frames: int | None
    frame_files: tuple[Path, ...] | None = None

    def frames(self, max_frames: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, frame uint8 [H, W, 3])`` in order, at most ``max_frames``; every frame has the first one's size.

        Names are the file stems for a folder and ``00000``, ``00001``, ... for a video file.
        """
        frames = self._folder_frames() if self.frame_files is not None else self._file_frames()
        size = None
        for index, (name, frame) in enumerate(frames):
            if max_frames is not None and index >= max_frames:
                return
            if size is None:
                size = frame.shape
            elif frame.shape != size:
                raise VideoReadError(f"{self.path}: frame {name!r} is {frame.shape[1]}x{frame.shape[0]} (WxH) but the "
                                     f"first frame is {size[1]}x{size[0]}; all frames of a video must have one size")
            yield name, frame

    def _folder_frames(self) -> Iterator[tuple[str, np.ndarray]]:
        for path in self.frame_files:
            try:
                with Image.open(path) as image:
                    frame = np.asarray(image.convert("RGB"))
            except (UnidentifiedImageError, OSError) as error:
                raise VideoReadError(f"frame {path} cannot be read as an image ({error}); remove or replace it") \
                    from error
            yield path.stem, frame

    def _file_frames(self) -> Iterator[tuple[str, np.ndarray]]:
        try:
            with av.open(str(self.path)) as container:
                for index, frame in enumerate(container.decode(video=0)):
                    yield f"{index:05d}", frame.to_ndarray(format="rgb24")
        except av.FFmpegError as error:
            raise VideoReadError(f"{self.path}: decoding failed ({error}); re-encode the video (e.g. ffmpeg -i IN "
                                 f"-c:v libx264 OUT.mp4) or extract its frames to a folder") from error


def open_video(path: str | Path) -> VideoSource:
    """The video at ``path``: a file PyAV can decode (mp4, avi, webm, ...) or a folder of .jpg/.jpeg/.png frames
    sorted by file name. Raises FileNotFoundError when ``path`` does not exist, VideoReadError when it is not a
    readable video or holds no frames."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video {path} does not exist; pass a video file or a folder of frames")
    if path.is_dir():
        return _open_folder(path)
    return _open_file(path)


def _open_folder(path: Path) -> VideoSource:
    files = sorted(child for child in path.iterdir() if child.is_file() and child.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise VideoReadError(f"folder {path} holds no frames ({', '.join(FRAME_SUFFIXES)} files); put the video's "
                             f"frames there or pass a video file")
    stems = [file.stem for file in files]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise VideoReadError(f"folder {path} holds several frames named {duplicates} (different extensions); "
                             f"frame names must be unique")
    return VideoSource(path, DEFAULT_FOLDER_FPS, len(files), tuple(files))


def _open_file(path: Path) -> VideoSource:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path} has no video stream; pass a video file or a folder of frames")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            num_frames = stream.frames or None
    except av.FFmpegError as error:
        raise VideoReadError(f"{path} cannot be read as a video ({error}); pass a file that ffmpeg can decode "
                             f"(mp4, avi, webm, ...) or a folder of .jpg/.png frames") from error
    return VideoSource(path, float(rate) if rate else DEFAULT_FOLDER_FPS, num_frames)


def _staging_path(path: Path) -> Path:
    """A temporary file name next to ``path`` for this process, with the same suffix (formats go by suffix)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")


class Mp4Writer:
    """Stream frames to an H.264 mp4 (yuv420p, playable everywhere). Use as a context manager.

    yuv420p needs even sides, so an odd last row or column is dropped. The file appears at ``path`` on a clean
    exit; on an exception the partial file is removed.
    """

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        self._staging = _staging_path(self.path)
        self._container = av.open(str(self._staging), mode="w")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.pix_fmt = "yuv420p"
        self._size = None

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 RGB frame ``[H, W, 3]``."""
        height, width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
        if self._size is None:
            self._size = (height, width)
            self._stream.height, self._stream.width = height, width
        frame = np.ascontiguousarray(frame[:height, :width])
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        if self._size is None:
            self._discard()
            raise ValueError(f"no frames were written to {self.path}; an mp4 needs at least one")
        try:
            for packet in self._stream.encode():  # flush the encoder's delayed frames
                self._container.mux(packet)
            self._container.close()
            os.replace(self._staging, self.path)
        except BaseException:
            self._staging.unlink(missing_ok=True)
            raise

    def _discard(self) -> None:
        self._container.close()
        self._staging.unlink(missing_ok=True)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()


class GifWriter:
    """Collect frames and write an endlessly looping GIF at ``close()``. Use as a context manager.

    Each frame is kept as a 256-colour palette image (1 byte a pixel) until then, since a GIF is written in one
    go. PIL merges consecutive identical frames into one longer frame, so playback time is kept but the GIF may
    hold fewer frames than were written.
    """

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        self.duration_ms = max(1, round(1000 / fps))
        self._frames: list[Image.Image] = []

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 RGB frame ``[H, W, 3]``."""
        self._frames.append(Image.fromarray(frame).quantize(colors=256))

    def close(self) -> None:
        if not self._frames:
            raise ValueError(f"no frames were written to {self.path}; a GIF needs at least one")
        first, *rest = self._frames
        atomic_write(self.path, lambda file: first.save(file, format="GIF", save_all=True, append_images=rest,
                                                        duration=self.duration_ms, loop=0))

    def __enter__(self) -> "GifWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
