"""Write a file or a folder so that readers see either the old content or the complete new one, never a partial one."""
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable

# mkstemp/mkdtemp create files/folders readable by the owner only; give the result the permissions a plain
# open()/mkdir() would.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temp file in ``path``'s folder, fsync it, then rename it over ``path``.

    If ``write`` raises, the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
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
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        staging.chmod(0o777 & ~_UMASK)  # mkdtemp's folder is the owner's only; give it a plain mkdir()'s permissions
        yield staging
        if not target.exists():
            os.replace(staging, target)
        elif replace:
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            target.rmdir()  # the empty folder checked above
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_folder(folder: str | Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (path relative to ``folder`` -> content) as the new content of ``folder``, all at once.

    An existing ``folder`` is replaced (``atomic_directory(folder, replace=True)``), so ``folder`` is always
    either absent, the old one or the complete new one.
    """
    with atomic_directory(folder, replace=True) as staging:
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
