"""Submissions: the ``Annotations/<video>/<exp_id>/<frame>.png`` tree and zip of Ref-YouTube-VOS, and MeViS's,
whose zip holds the ``<video>/<exp_id>/<frame>.png`` folders at its root.

A submission must hold one single-channel PNG with values 0/255 at the original frame size for every frame of
every expression of every video. ``check_submission`` lists everything that falls short, so that an
incomplete zip is never written or uploaded unnoticed. Writers put one video's masks in place at once with
``util.atomic_write.write_folder``, so an interrupted run never leaves a half-written video folder behind.
"""
import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.ytvos import exp_id_order
from util.atomic_write import atomic_write
from util.errors import UserInputError

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip header holds


@dataclass(frozen=True)
class ExpectedMask:
    """One PNG a complete submission holds."""

    video: str
    exp_id: str
    frame: str
    size: tuple[int, int]  # (width, height) of the source frame
    top: str = "Annotations"  # the folder holding the video folders; "" puts them at the root (MeViS)

    @property
    def name(self) -> str:
        path = f"{self.video}/{self.exp_id}/{self.frame}.png"
        return f"{self.top}/{path}" if self.top else path


def expected_masks(meta: dict, frame_sizes: dict[str, tuple[int, int]], top: str = "Annotations") -> list[ExpectedMask]:
    """Every PNG a submission for ``meta`` (a meta_expressions ``videos`` dict) must hold.

    ``frame_sizes`` maps a video to its (width, height); ``top`` is the folder of the video folders ("" for MeViS).
    """
    return [
        ExpectedMask(video, exp_id, frame, frame_sizes[video], top)
        for video, entry in sorted(meta.items())
        for exp_id in sorted(entry["expressions"], key=exp_id_order)
        for frame in entry["frames"]
    ]


def max_png_bytes(size: tuple[int, int]) -> int:
    """An upper bound on the size of a valid mask PNG of ``size`` (width, height): the raw 8-bit pixels, one filter
    byte a row, and room for headers and chunks; a larger member is refused before it is decompressed."""
    width, height = size
    return height * (width + 1) + 64 * 1024


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """[H, W] bool -> PNG bytes of an 8-bit "L" image with values 0/255."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def mask_problem(data: bytes, expected: ExpectedMask) -> str | None:
    """Why ``data`` is not a valid mask PNG for ``expected``, or None when it is."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.size != expected.size:  # before decoding: a huge declared size is never decompressed
            return f"{expected.name}: size {image.size}, expected {expected.size} (width, height)"
        image.load()
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{expected.name}: unreadable PNG ({error})"
    if image.mode not in ("L", "1", "P"):
        return f"{expected.name}: mode {image.mode}, expected a single-channel image"
    values = np.unique(np.asarray(image.convert("L")))
    if not set(values.tolist()) <= {0, 255}:
        return f"{expected.name}: values {values[:5].tolist()}..., expected only 0 and 255"
    return None


def check_tree(root: Path, expected: list[ExpectedMask]) -> list[str]:
    """Problems of the prediction tree under ``root`` (the folder holding ``Annotations/``, or the video folders)."""
    problems = []
    for item in expected:
        path = root / item.name
        if not path.is_file():
            problems.append(f"{item.name}: missing")
            continue
        problem = mask_problem(path.read_bytes(), item)
        if problem:
            problems.append(problem)
    return problems


def check_zip(zip_path: Path, expected: list[ExpectedMask]) -> list[str]:
    """Problems of a submission zip: missing, duplicated, oversized, unreadable or malformed PNGs, and files it
    should not hold."""
    with zipfile.ZipFile(zip_path) as archive:
        files = [info for info in archive.infolist() if not info.is_dir()]
        names = {info.filename for info in files}
        counts = Counter(info.filename for info in files)
        problems = [f"{name}: {count} copies in the zip" for name, count in sorted(counts.items()) if count > 1]
        for item in expected:
            if item.name not in names:
                problems.append(f"{item.name}: missing")
                continue
            info = archive.getinfo(item.name)
            if info.file_size > max_png_bytes(item.size):
                problems.append(f"{item.name}: {info.file_size} bytes, more than a {item.size} mask PNG can hold")
                continue
            try:
                data = archive.read(info)
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                problems.append(f"{item.name}: unreadable zip member ({error})")
                continue
            problem = mask_problem(data, item)
            if problem:
                problems.append(problem)
    extra = sorted(names - {item.name for item in expected})
    problems.extend(f"{name}: not part of the split" for name in extra)
    return problems


def write_submission_zip(root: Path, zip_path: Path, expected: list[ExpectedMask]) -> None:
    """Zip the ``expected`` PNGs under ``root`` to ``zip_path``, under the same names, after checking they are
    complete (Ref-YouTube-VOS: ``Annotations/`` at the zip root; MeViS: the video folders).

    Raises UserInputError listing the problems instead of writing an incomplete zip; the zip appears atomically
    (``util.atomic_write.atomic_write``: a failure leaves neither a partial zip nor a temporary file). The members
    carry a fixed date and mode (``zip_member``), so the bytes depend on the PNGs only.
    """
    problems = check_tree(root, expected)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UserInputError(f"the submission under {root} is incomplete ({len(problems)} problems):\n  {shown}{more}")

    def write(file) -> None:
        with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for item in expected:
                archive.writestr(zip_member(item.name), (root / item.name).read_bytes())

    atomic_write(zip_path, write)


def zip_member(name: str) -> zipfile.ZipInfo:
    """A deflated zip entry whose header holds nothing but ``name``: a fixed date (1980-01-01) and mode 0644, so
    that the same PNGs give the same zip bytes however, whenever and by how many processes they were written."""
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
    return info
