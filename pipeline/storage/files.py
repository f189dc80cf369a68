"""The I/O boundary: every file any deployc command reads or writes goes through here.

Reads accept regular files only — a FIFO or a device would block a read forever or never end, and a file on
/proc or /sys claims size 0 yet streams without end — and the size is checked against a bound before a byte is
read. A path taken from a file (a marker's list, a manifest's artifact path, a sweep's variant id) is confined to
its folder by `inside`. Writes are atomic (a sibling temp file, created with O_EXCL|O_NOFOLLOW so no planted
link is written through, renamed over the target: a rename replaces a link, never follows it). Folders written
into are opened once and worked on through their handle (storage/folder.py). Hashing: `file_digest` hashes a
whole regular file (the artifacts deployc wrote); `input_digest` hashes a user's input up to
HASH_CONTENT_LIMIT and keys a larger one on its size, inode and modification time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import secrets
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from deployc.errors import UsageError

HASH_CONTENT_LIMIT = 512 << 20  # inputs up to this size are hashed by content; larger ones by size+inode+mtime
MAX_JSON_BYTES = 64 << 20  # a manifest, key file, marker or cache record: deployc writes them far smaller
_PSEUDO_FILESYSTEMS = frozenset(
    {"proc", "sysfs", "debugfs", "tracefs", "securityfs", "cgroup", "cgroup2", "configfs", "pstore", "bpf"}
    | {"efivarfs", "fusectl", "devpts", "mqueue", "binfmt_misc", "nsfs", "rpc_pipefs"}
)


def json_safe(value: Any) -> Any:
    """`value` with NaN/±Infinity floats as null: strict JSON that every parser reads (the gate says why)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def size_text(n: int) -> str:
    """1536 -> '1.5 KiB' (the storage layer's own: outputs' human_bytes sits above it)."""
    value, unit = float(n), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


@functools.cache
def _pseudo_devices() -> frozenset[int]:
    """Device ids of the kernel's pseudo file systems (/proc, /sys, ...), read from the mount table once."""
    devices = set()
    try:
        with open("/proc/self/mounts", "rb") as f:
            table = f.read(1 << 20).decode(errors="replace")
    except OSError:
        table = ""
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] in _PSEUDO_FILESYSTEMS:
            with contextlib.suppress(OSError):
                devices.add(os.stat(fields[1].replace("\\040", " ")).st_dev)
    return frozenset(devices)


def file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a symbolic link" if stat.S_ISLNK(mode) else "a regular file"


def check_regular_stat(st: os.stat_result, path: Path, key: str, what: str, max_bytes: int | None) -> None:
    """Refuse (UsageError naming `key`) what is not a regular file on a real file system, or is over `max_bytes`."""
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{key}: '{path}' is a folder; give a {what} path")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(
            f"{key}: '{path}' is not a regular file ({file_kind(st.st_mode)}: a read could block forever); "
            f"give a {what} path"
        )
    if st.st_dev in _pseudo_devices():
        raise UsageError(f"{key}: '{path}' is a kernel file (/proc, /sys), not a regular file; give a {what} path")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UsageError(f"{key}: '{path}' is {size_text(st.st_size)}; a {what} over {size_text(max_bytes)} is refused")


def open_regular(path: Path, key: str, what: str = "file", max_bytes: int | None = None) -> int:
    """A read-only descriptor of `path` (links followed: the user named it) when it is a regular file of at most
    `max_bytes`; opened non-blocking, so a FIFO planted there is refused instead of waiting for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise UsageError(f"{key}: {what} '{path}' not found") from None
    except OSError as exc:
        if os.path.exists(path):
            with contextlib.suppress(OSError):
                check_regular_stat(os.stat(path), Path(path), key, what, max_bytes)
        raise UsageError(f"{key}: cannot read '{path}' ({exc.strerror})") from None
    try:
        check_regular_stat(os.fstat(fd), Path(path), key, what, max_bytes)
    except BaseException:
        os.close(fd)
        raise
    return fd


def regular_file(path: Path, key: str, what: str = "file", max_bytes: int | None = None) -> Path:
    """`path` when it is a regular file (see open_regular); else a UsageError naming `key`. Nothing is read."""
    os.close(open_regular(path, key, what, max_bytes))
    return path


def read_bytes(path: Path, key: str, max_bytes: int, what: str = "file") -> bytes:
    """The whole content of a regular file of at most `max_bytes`, checked before reading (and while: a file
    growing under the read is cut at the bound and refused)."""
    fd = open_regular(path, key, what, max_bytes)
    try:
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise UsageError(f"{key}: '{path}' grew past {size_text(max_bytes)} while read; refused")
    except OSError as exc:
        raise UsageError(f"{key}: cannot read '{path}' ({exc.strerror})") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_json(path: Path, key: str, max_bytes: int = MAX_JSON_BYTES, what: str = "JSON file") -> Any:
    """Parsed JSON of a bounded regular file; malformed text is a UsageError naming the file and line."""
    data = read_bytes(path, key, max_bytes, what)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{key}: '{path}' is not UTF-8 text (byte at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{key}: '{path}' is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise UsageError(f"{key}: '{path}' is nested too deeply to be deployc's JSON") from None


def is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def relative_path(rel: Any, key: str, where: Path) -> PurePosixPath:
    """`rel` as a relative path that names something inside a folder (no '..', not absolute, not empty)."""
    if not isinstance(rel, str) or not rel.strip() or "\0" in rel:
        raise UsageError(f"{key}: {rel!r} is not a relative path inside '{where}'")
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in rel:
        raise UsageError(f"{key}: '{rel}' points outside '{where}'; paths read from there must stay inside it")
    return path


def inside(base: Path, rel: Any, key: str) -> Path:
    """base/rel when `rel` (read from a file: never trusted) stays inside `base` with no link on the way; else a
    UsageError naming `key`."""
    path = base
    for part in relative_path(rel, key, base).parts:
        path = path / part
        if is_link(path):
            raise UsageError(f"{key}: '{path}' is a symbolic link; deployc never follows links inside '{base}'")
    return path


def _digest_fd(fd: int) -> str:
    h = hashlib.sha256()
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a whole regular file (an artifact or report: what a manifest vouches for)."""
    fd = open_regular(path, str(path))
    try:
        return _digest_fd(fd)
    finally:
        os.close(fd)


def input_digest(path: Path) -> str:
    """What stands for a user's input file in a build key, without ever blocking or reading without end: the
    sha256 of its content up to HASH_CONTENT_LIMIT; beyond it, 'stat:' + size, device, inode and mtime (a 1 TB
    file is not read to decide whether to rebuild); 'missing' or why it is not a regular file otherwise."""
    try:
        fd = open_regular(path, "input")
    except UsageError as exc:
        return "missing" if not os.path.lexists(path) else f"unreadable: {exc}"
    try:
        st = os.fstat(fd)
        if st.st_size > HASH_CONTENT_LIMIT:
            return f"stat:{st.st_size}:{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"
        return _digest_fd(fd)
    finally:
        os.close(fd)


def temp_name(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write to a fresh sibling temp file (O_EXCL|O_NOFOLLOW: never a planted link) and rename it over `path`:
    a reader never sees half a file, and a link at `path` is replaced, never written through."""
    tmp = path.with_name(temp_name(path.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def json_text(payload: Any) -> str:
    """Strict JSON (see json_safe), indented, with a final newline."""
    return json.dumps(json_safe(payload), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Strict JSON (see json_safe), written atomically."""
    write_text_atomic(path, json_text(payload))
