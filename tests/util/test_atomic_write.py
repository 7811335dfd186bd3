"""util/atomic_write.py: a folder appears complete or not at all; existing targets are refused or replaced."""
import os
import stat

import pytest

from util.atomic_write import atomic_directory, atomic_write, remove_stale_staging, write_folder


def names(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_new_folder_appears_with_its_content_and_plain_permissions(tmp_path):
    target = tmp_path / "a" / "out"
    with atomic_directory(target) as staging:
        (staging / "x.txt").write_text("x")
        assert not target.exists()  # nothing visible before the block ends
    assert names(target) == ["x.txt"] and names(tmp_path / "a") == ["out"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask  # as mkdir would, not mkdtemp's 0o700


def test_an_empty_target_is_filled_and_a_non_empty_one_refused_before_the_block(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as staging:
        (staging / "x.txt").write_text("x")
    assert names(tmp_path / "empty") == ["x.txt"]
    ran = []
    with pytest.raises(FileExistsError, match="empty.*not an empty folder"):
        with atomic_directory(tmp_path / "empty"):
            ran.append(True)
    assert not ran and (tmp_path / "empty" / "x.txt").read_text() == "x"
    (tmp_path / "file").write_text("f")
    with pytest.raises(FileExistsError):
        with atomic_directory(tmp_path / "file"):
            pass
    assert names(tmp_path) == ["empty", "file"]


def test_replace_swaps_the_whole_folder(tmp_path):
    target = tmp_path / "out"
    write_folder(target, {"old.txt": b"old", "sub/keep.txt": b"1"})
    write_folder(target, {"sub/new.bin": b"\x00\x01"})
    assert names(target) == ["sub"] and names(target / "sub") == ["new.bin"]
    assert (target / "sub" / "new.bin").read_bytes() == b"\x00\x01"
    assert names(tmp_path) == ["out"]  # neither the staging nor the old folder is left


@pytest.mark.parametrize("replace", [False, True])
def test_an_error_in_the_block_leaves_the_target_as_it_was(tmp_path, replace):
    target = tmp_path / "out"
    if replace:
        write_folder(target, {"old.txt": b"old"})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(target, replace=replace) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("boom")
    if replace:
        assert names(target) == ["old.txt"] and names(tmp_path) == ["out"]
    else:
        assert names(tmp_path) == []


def test_permissions_follow_the_umask_of_the_moment_and_importing_changes_no_umask(tmp_path):
    """The umask in force when a file or folder is written decides its mode (a umask read once at import would
    not), and the module never sets the process's umask."""
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
        write_folder(tmp_path / "d", {"x.txt": b"x"})
        assert os.umask(0o027) == 0o077  # still what this test set
        atomic_write(tmp_path / "g.bin", lambda f: f.write(b"y"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "g.bin").stat().st_mode) == 0o640
    assert (tmp_path / "f.bin").read_bytes() == b"x"
    assert names(tmp_path) == ["d", "f.bin", "g.bin"]  # no temp file left


def test_the_staging_folders_a_killed_writer_left_go_and_nothing_else(tmp_path):
    """What SIGKILL inside atomic_directory leaves (its cleanup never runs): the staging folder, and while
    replacing the old one too. Redoing that target removes exactly those; other targets' are left alone."""
    target = tmp_path / "video"
    (tmp_path / ".video.partial-0a1b2c3d" / "0").mkdir(parents=True)
    (tmp_path / ".video.partial-0a1b2c3d" / "0" / "00000.png").write_bytes(b"half")
    (tmp_path / ".video.old-deadbeef" / "video").mkdir(parents=True)
    keep = [".other.partial-0a1b2c3d",  # another video's: its own rank's business
            ".video.partial-0a1b2c3",  # not a staging name: 7 hex digits
            ".video.partial-0a1b2c3dd", ".video.partial-0A1B2C3D", "video.partial-0a1b2c3d", ".video.tmp-0a1b2c3d",
            ".video.x.partial-0a1b2c3d", "other"]
    for name in keep:
        (tmp_path / name).mkdir()
    (tmp_path / ".video.partial-11111111").write_bytes(b"a file, not a staging folder")
    assert sorted(path.name for path in remove_stale_staging(target)) == [".video.old-deadbeef",
                                                                           ".video.partial-0a1b2c3d"]
    assert names(tmp_path) == sorted(keep + [".video.partial-11111111"])
    assert remove_stale_staging(tmp_path / "absent" / "video") == []

    (tmp_path / ".video.partial-00000000").mkdir()  # write_folder clears them before writing
    write_folder(target, {"0/00000.png": b"png"})
    assert names(tmp_path) == sorted(keep + [".video.partial-11111111", "video"])
    assert names(target / "0") == ["00000.png"]
