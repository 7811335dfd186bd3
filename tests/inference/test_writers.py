"""check_zip on hostile or damaged zips: duplicates, oversized members, corrupt member data, decompression bombs."""
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from inference.writers import ExpectedMask, check_zip, mask_png_bytes

EXPECTED = [ExpectedMask("v", "0", "00000", (6, 4)), ExpectedMask("v", "0", "00005", (6, 4))]


def write(path, entries: list[tuple[str, bytes]], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def good_entries() -> list[tuple[str, bytes]]:
    return [(item.name, mask_png_bytes(np.zeros((4, 6), bool))) for item in EXPECTED]


def test_a_complete_zip_has_no_problems(tmp_path):
    assert check_zip(write(tmp_path / "ok.zip", good_entries()), EXPECTED) == []


def test_duplicate_member_is_reported(tmp_path):
    entries = good_entries()
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = write(tmp_path / "dup.zip", entries + [entries[0]])
    assert check_zip(path, EXPECTED) == [f"{EXPECTED[0].name}: 2 copies in the zip"]


def test_oversized_member_is_refused_before_decompression(tmp_path):
    entries = good_entries()
    entries[1] = (entries[1][0], b"\0" * 200_000)  # compresses to almost nothing: a small zip bomb
    path = write(tmp_path / "big.zip", entries, zipfile.ZIP_DEFLATED)
    (problem,) = check_zip(path, EXPECTED)
    assert problem.startswith(f"{EXPECTED[1].name}: 200000 bytes, more than")


def test_corrupt_member_data_names_the_member(tmp_path):
    path = write(tmp_path / "crc.zip", good_entries())
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT")  # inside the first stored PNG
    data[start + 6] ^= 0xFF
    path.write_bytes(bytes(data))
    (problem,) = check_zip(path, EXPECTED)
    assert problem.startswith(f"{EXPECTED[0].name}: unreadable zip member") and "CRC" in problem


def test_a_png_declaring_a_huge_size_is_not_decoded(tmp_path):
    buffer = io.BytesIO()
    Image.new("L", (6, 4)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big")  # IHDR width, height (CRC now wrong)
    entries = good_entries()
    entries[0] = (entries[0][0], bytes(png))
    (problem,) = check_zip(write(tmp_path / "bomb.zip", entries), EXPECTED)
    assert problem.startswith(EXPECTED[0].name) and ("(100000, 100000)" in problem or "unreadable PNG" in problem)


def write_tree(root, entries):
    for name, data in entries:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_submission_zip_bytes_depend_on_the_pngs_only(tmp_path):
    from inference.writers import write_submission_zip
    import os

    first = write_tree(tmp_path / "a", good_entries())
    second = write_tree(tmp_path / "b", good_entries())
    os.utime(second / EXPECTED[0].name, (0, 1_000_000_000))  # another date, as another process would leave
    write_submission_zip(first, tmp_path / "a.zip", EXPECTED)
    write_submission_zip(second, tmp_path / "b.zip", EXPECTED)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert check_zip(tmp_path / "a.zip", EXPECTED) == []


def test_a_failing_zip_write_leaves_the_old_zip_and_no_temporary_file(tmp_path, monkeypatch):
    from inference import writers

    root = write_tree(tmp_path / "tree", good_entries())
    zip_path = tmp_path / "out" / "submission.zip"
    zip_path.parent.mkdir()
    zip_path.write_bytes(b"the old zip")
    calls = []

    def failing_member(name):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full")
        return zipfile.ZipInfo(name)

    monkeypatch.setattr(writers, "zip_member", failing_member)
    with pytest.raises(OSError, match="disk full"):
        writers.write_submission_zip(root, zip_path, EXPECTED)
    assert [path.name for path in zip_path.parent.iterdir()] == ["submission.zip"]
    assert zip_path.read_bytes() == b"the old zip"
