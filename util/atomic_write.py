"""Write a file or a folder so that readers see either the old content or the complete new one, never a partial one.

A process killed (SIGKILL, OOM, preemption) inside ``atomic_directory`` leaves its staging folder
``.<target>.partial-<8 hex>`` (and, killed while replacing, ``.<target>.old-<8 hex>``) beside ``target``: hidden,
never under ``target``'s name, so never read as ``target``. ``remove_stale_staging(target)`` deletes those of one
target; ``write_folder`` calls it before writing, so redoing a target also clears what a killed writer of that same
target left. Each target has one writer at a time (an inference rank owns its videos), so no live staging folder of
another process is ever removed.
"""
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable


def _unique_path(parent: Path, prefix: str, suffix: str, create: Callable[[Path], object]):
    """``create(path)`` on the first free random name ``<parent>/<prefix><hex><suffix>``; returns its result.

    Unlike tempfile's mkstemp/mkdtemp (owner-only permissions), ``create`` uses the default modes, so the process's
    umask at the time of the call gives the result the permissions a plain open()/mkdir() would.
    """
    while True:
        path = _random_name(parent, prefix, suffix)
        try:
            return path, create(path)
        except FileExistsError:
            continue


_TOKEN_BYTES = 4  # the random part of a staging name: 8 hex digits


def _staging_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-"


def _random_name(parent: Path, prefix: str, suffix: str) -> Path:
    return parent / f"{prefix}{secrets.token_hex(_TOKEN_BYTES)}{suffix}"


def _new_file(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temp file in ``path``'s folder, fsync it, then rename it over ``path``.

    If ``write`` raises, the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp, fd = _unique_path(path.parent, f".{path.name}.", ".tmp", _new_file)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def atomic_directory(target: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; when the block ends normally it takes ``target``'s place.

    So ``target`` is always either as it was or complete. If the block raises, the staging folder is removed and
    ``target`` is left as it was. With ``replace=False``, ``target`` must be absent or an empty folder
    (FileExistsError otherwise, raised before the block runs); with ``replace=True`` an existing ``target`` is
    replaced as a whole.
    """
    target = Path(target)
    if not replace and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} already exists and is not an empty folder; delete it or choose another "
                              f"output folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging, _ = _unique_path(target.parent, _staging_prefix(target, "partial"), "", os.mkdir)
    try:
        yield staging
        if not target.exists():
            os.replace(staging, target)
        elif replace:
            old, _ = _unique_path(target.parent, _staging_prefix(target, "old"), "", os.mkdir)
            os.replace(target, old / target.name)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            target.rmdir()  # the empty folder checked above
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def remove_stale_staging(target: str | Path) -> list[Path]:
    """Delete the folders that an ``atomic_directory(target)`` killed before its cleanup left beside ``target``:
    exactly the names ``.<target name>.partial-<8 hex>`` and ``.<target name>.old-<8 hex>`` (the staging folders of
    this target, no other target's and no other file); returns them. Only for a target nobody is writing now.
    """
    target = Path(target)
    prefixes = "|".join(re.escape(_staging_prefix(target, kind)) for kind in ("partial", "old"))
    pattern = re.compile(f"(?:{prefixes})[0-9a-f]{{{2 * _TOKEN_BYTES}}}")
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return []
    stale = [Path(entry.path) for entry in entries
             if pattern.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def write_folder(folder: str | Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (path relative to ``folder`` -> content) as the new content of ``folder``, all at once.

    An existing ``folder`` is replaced (``atomic_directory(folder, replace=True)``), so ``folder`` is always
    either absent, the old one or the complete new one. The staging folders a killed earlier write of ``folder``
    left are removed first (``remove_stale_staging``).
    """
    remove_stale_staging(folder)
    with atomic_directory(folder, replace=True) as staging:
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
