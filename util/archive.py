"""Extract downloaded dataset archives (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) without trusting them.

Every member is checked before anything is written; an archive holding a member with an absolute path, a ``..``
component, a link that points outside the destination, a hard link, or a device / fifo file is refused as a whole
(``UnsafeArchiveError`` naming the archive and the member). The members go to a staging folder inside ``dest``
first and are moved into place at the end, so a failed extraction leaves ``dest`` as it was.
"""
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from util.errors import UserInputError


class UnsafeArchiveError(UserInputError):
    """An archive member that would write outside the destination or is not a plain file, folder or safe link."""


def _relative_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The path components of member ``name``, refused when absolute or climbing out with ``..``."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PurePosixPath(posix).is_absolute() or (len(posix) > 1 and posix[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract the archive")
    parts = tuple(part for part in PurePosixPath(posix).parts if part not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} has a '..' component; refusing to extract the archive")
    return parts


def _check_link(archive: Path, name: str, parts: tuple[str, ...], target: str) -> None:
    """A symbolic link member must resolve inside the extraction folder (relative to the link's own folder)."""
    if target.startswith("/") or PurePosixPath(target).is_absolute():
        raise UnsafeArchiveError(f"{archive}: link {name!r} points to the absolute path {target!r}; refusing to "
                                 "extract the archive")
    depth = len(parts) - 1  # folders above the link inside the destination
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            raise UnsafeArchiveError(f"{archive}: link {name!r} -> {target!r} points outside the destination; "
                                     "refusing to extract the archive")


def _checked_tar_members(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        parts = _relative_parts(archive, member.name)
        if member.issym():
            _check_link(archive, member.name, parts, member.linkname)
        elif member.islnk():
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a hard link (to {member.linkname!r}); "
                                     "refusing to extract the archive")
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device, fifo or other special file; "
                                     "refusing to extract the archive")
    return members


def _check_zip_members(archive: Path, zip_file: zipfile.ZipFile) -> None:
    for info in zip_file.infolist():
        _relative_parts(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symbolic link, which zip extraction "
                                     "would write as a file; refusing to extract the archive")
        if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a device, fifo or other special file; "
                                     "refusing to extract the archive")


def _extract_to(archive: Path, staging: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zip_file:
            _check_zip_members(archive, zip_file)
            zip_file.extractall(staging)
        return
    try:
        tar = tarfile.open(archive)
    except tarfile.TarError as error:
        raise UserInputError(f"{archive} is neither a zip nor a (compressed) tar archive ({error})") from error
    with tar:
        members = _checked_tar_members(archive, tar)
        # The "data" filter repeats the checks above inside tarfile and drops permissions that are unsafe.
        tar.extractall(staging, members=members, filter="data")


def safe_extract(archive_path: str | Path, dest: str | Path) -> list[Path]:
    """Extract ``archive_path`` into ``dest`` (created if needed); returns the top-level paths it added.

    Raises ``UnsafeArchiveError`` (nothing extracted) for an unsafe member, ``FileExistsError`` when a top-level
    entry of the archive already exists in ``dest`` (nothing is overwritten), ``ValueError`` for a file that is
    not an archive, ``FileNotFoundError`` for a missing one.
    """
    archive, dest = Path(archive_path), Path(dest)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        _extract_to(archive, staging)
        entries = sorted(staging.iterdir())
        clashes = [str(dest / entry.name) for entry in entries if os.path.lexists(dest / entry.name)]
        if clashes:
            raise FileExistsError(f"extracting {archive} would overwrite {clashes}; remove them or pick another "
                                  "destination")
        for entry in entries:
            os.replace(entry, dest / entry.name)
        return [dest / entry.name for entry in entries]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
