"""safe_extract on crafted archives: good ones extract, malicious ones are refused with nothing written."""
import io
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from util.archive import UnsafeArchiveError, safe_extract

REPO = Path(__file__).resolve().parents[2]


def make_zip(path: Path, entries: dict[str, bytes], modes: dict[str, int] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (modes or {}).get(name, stat.S_IFREG | 0o644) << 16
            archive.writestr(info, data)
    return path


def make_tar(path: Path, members: list[tuple[str, str, str | bytes]]) -> Path:
    """members: (name, kind in file/dir/sym/lnk/chr/fifo, data or link target)."""
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
             "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as archive:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            if kind == "file":
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
            else:
                if kind in ("sym", "lnk"):
                    info.linkname = payload
                archive.addfile(info)
    return path


def test_valid_zip_and_tar_gz_extract_their_content(tmp_path):
    dest = tmp_path / "dest"
    zip_path = make_zip(tmp_path / "a.zip", {"DAVIS/JPEGImages/bear/00000.jpg": b"jpeg", "DAVIS/README": b"hi"})
    assert safe_extract(zip_path, dest) == [dest / "DAVIS"]
    assert (dest / "DAVIS" / "JPEGImages" / "bear" / "00000.jpg").read_bytes() == b"jpeg"
    tar_path = make_tar(tmp_path / "b.tar.gz", [("a2d", "dir", ""), ("a2d/clip.mp4", "file", b"mp4"),
                                                ("a2d/latest", "sym", "clip.mp4")])
    assert safe_extract(tar_path, dest) == [dest / "a2d"]
    assert (dest / "a2d" / "latest").resolve() == (dest / "a2d" / "clip.mp4").resolve()
    assert sorted(p.name for p in dest.iterdir()) == ["DAVIS", "a2d"]  # no staging folder left
    with pytest.raises(FileExistsError, match="would overwrite"):
        safe_extract(zip_path, dest)


MALICIOUS_ZIPS = {
    "absolute": ({"/etc/evil": b"x"}, None, "absolute path"),
    "parent": ({"ok/file": b"x", "ok/../../evil": b"x"}, None, "'..' component"),
    "windows_drive": ({"C:/evil": b"x"}, None, "absolute path"),
    "backslash_parent": ({"ok\\..\\..\\evil": b"x"}, None, "'..' component"),
    "symlink": ({"link": b"/etc/passwd"}, {"link": stat.S_IFLNK | 0o777}, "symbolic link"),
    "device": ({"dev": b""}, {"dev": stat.S_IFCHR | 0o644}, "device"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_ZIPS))
def test_malicious_zip_is_refused_and_nothing_is_written(tmp_path, case):
    entries, modes, message = MALICIOUS_ZIPS[case]
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=message) as error:
        safe_extract(make_zip(tmp_path / f"{case}.zip", {"first": b"ok", **entries}, modes), dest)
    assert f"{case}.zip" in str(error.value)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists()


MALICIOUS_TARS = {
    "absolute": ([("/tmp/evil", "file", b"x")], "absolute path"),
    "parent": ([("../evil", "file", b"x")], "'..' component"),
    "symlink_absolute": ([("link", "sym", "/etc")], "absolute path"),
    "symlink_outside": ([("a", "dir", ""), ("a/link", "sym", "../../outside")], "outside the destination"),
    "symlink_then_write_through": ([("link", "sym", ".."), ("link/evil", "file", b"x")], "outside the destination"),
    "hardlink": ([("a", "file", b"x"), ("b", "lnk", "/etc/passwd")], "hard link"),
    "char_device": ([("dev", "chr", "")], "device"),
    "fifo": ([("pipe", "fifo", "")], "fifo"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_TARS))
def test_malicious_tar_is_refused_and_nothing_is_written(tmp_path, case):
    members, message = MALICIOUS_TARS[case]
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(make_tar(tmp_path / f"{case}.tar", [("first", "file", b"ok"), *members]), dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside").exists()


def test_not_an_archive_and_missing_archive(tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="neither a zip nor"):
        safe_extract(tmp_path / "junk.zip", tmp_path / "dest")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        safe_extract(tmp_path / "absent.tar", tmp_path / "dest")


def test_script_extracts_and_reports_an_unsafe_archive_in_one_line(tmp_path):
    good = make_zip(tmp_path / "good.zip", {"data/x.txt": b"x"})
    bad = make_tar(tmp_path / "bad.tar", [("../evil", "file", b"x")])
    script = [sys.executable, "-m", "scripts.extract_archives"]
    result = subprocess.run(script + [str(good), "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0 and (tmp_path / "out" / "data" / "x.txt").read_bytes() == b"x"
    result = subprocess.run(script + [str(bad), "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "'..' component" in result.stderr and "Traceback" not in result.stderr
