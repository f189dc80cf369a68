"""The I/O boundary (deployc.storage.files and folder): what it refuses, what it never follows, what it never reads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from deployc.errors import UsageError
from deployc.storage.files import (
    HASH_CONTENT_LIMIT,
    file_digest,
    input_digest,
    inside,
    read_bytes,
    read_json,
    regular_file,
    write_bytes_atomic,
)
from deployc.storage.folder import Folder


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: os.mkfifo(p), r"k: '.*' is not a regular file \(a FIFO: a read could block forever\)"),
        (lambda p: p.mkdir(), r"k: '.*' is a folder"),
        (lambda p: None, r"k: file '.*' not found"),
    ],
)
def test_reads_refuse_what_is_not_a_regular_file_without_blocking(tmp_path: Path, make, message: str):
    path = tmp_path / "x"
    make(path)
    with pytest.raises(UsageError, match=message):
        read_bytes(path, "k", 1 << 20)


def test_devices_and_kernel_files_are_refused():
    with pytest.raises(UsageError, match=r"'/dev/zero' is not a regular file \(a device"):
        regular_file(Path("/dev/zero"), "k")
    with pytest.raises(UsageError, match=r"'/proc/self/pagemap' is a kernel file"):
        regular_file(Path("/proc/self/pagemap"), "k")  # a regular file of size 0 that reads without end


def test_the_size_bound_is_checked_before_reading(tmp_path: Path):
    path = sparse(tmp_path / "big", 10 << 30)  # reading it would take seconds and 10 GiB
    with pytest.raises(UsageError, match=r"'.*big' is 10\.0 GiB; a config over 1\.0 MiB is refused"):
        read_bytes(path, "k", 1 << 20, "config")
    assert read_bytes(sparse(tmp_path / "small", 100), "k", 100) == b"\0" * 100


def test_read_json_names_the_line_of_malformed_text(tmp_path: Path):
    (tmp_path / "m.json").write_text('{\n "a": 1,\n}')
    with pytest.raises(UsageError, match=r"m\.json' is not valid JSON \(line 3"):
        read_json(tmp_path / "m.json", "manifest")
    (tmp_path / "m.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "m.json", "manifest") == {"a": [1, 2]}


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../x", "", "a\\..\\x", None, 5])
def test_inside_refuses_paths_that_leave_the_folder(tmp_path: Path, rel):
    with pytest.raises(UsageError, match=r"^k: "):
        inside(tmp_path, rel, "k")


def test_inside_refuses_a_link_on_the_way_and_keeps_honest_paths(tmp_path: Path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match=r"base/sub' is a symbolic link"):
        inside(tmp_path / "base", "sub/file.onnx", "k")
    assert inside(tmp_path / "base", "onnx/./m.onnx", "k") == tmp_path / "base" / "onnx" / "m.onnx"


def test_input_digest_hashes_small_files_and_keys_large_ones_by_stat(tmp_path: Path):
    small = tmp_path / "w.bin"
    small.write_bytes(b"weights")
    assert input_digest(small) == hashlib.sha256(b"weights").hexdigest() == file_digest(small)
    big = sparse(tmp_path / "big.bin", HASH_CONTENT_LIMIT + 1)
    key = input_digest(big)
    assert key.startswith(f"stat:{HASH_CONTENT_LIMIT + 1}:")
    os.utime(big, ns=(1, 1))
    assert input_digest(big) != key  # a touched large file changes the key
    os.mkfifo(tmp_path / "fifo")
    assert input_digest(tmp_path / "fifo").startswith("unreadable: ")  # never opened for a blocking read
    assert input_digest(tmp_path / "missing") == "missing"


def test_atomic_write_replaces_a_planted_link_and_never_writes_through_it(tmp_path: Path):
    (tmp_path / "victim.txt").write_text("precious")
    (tmp_path / "report.md").symlink_to(tmp_path / "victim.txt")
    write_bytes_atomic(tmp_path / "report.md", b"new")
    assert (tmp_path / "victim.txt").read_text() == "precious"
    assert not (tmp_path / "report.md").is_symlink() and (tmp_path / "report.md").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "victim.txt"]  # no temp file left


def test_a_folder_handle_never_follows_links_and_notices_a_swapped_path(tmp_path: Path):
    (tmp_path / "elsewhere").mkdir()
    out = Folder.open(tmp_path / "out", "--out", create=True)
    try:
        (tmp_path / "out" / "onnx").symlink_to(tmp_path / "elsewhere")
        with pytest.raises(UsageError, match=r"out/onnx' is a symbolic link where deployc needs a folder"):
            out.write("onnx/m.onnx", b"model")
        out.unlink("onnx")  # the link itself goes; its target stays
        assert (tmp_path / "elsewhere").is_dir() and not (tmp_path / "out" / "onnx").exists()
        out.write("onnx/m.onnx", b"model")
        assert out.files() == ["onnx/m.onnx"] and out.still_at_path()
        os.rename(tmp_path / "out", tmp_path / "moved")
        (tmp_path / "out").symlink_to(tmp_path / "elsewhere")
        assert not out.still_at_path()
        out.write("late.txt", b"x")  # through the handle: into the folder that was opened, never the link's target
        assert (tmp_path / "moved" / "late.txt").exists() and not any((tmp_path / "elsewhere").iterdir())
    finally:
        out.close()
