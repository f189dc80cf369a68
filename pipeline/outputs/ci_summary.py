"""GitHub Actions job summary: append report.md to the file $GITHUB_STEP_SUMMARY names, when set.

The file is opened once, for appending, with O_NOFOLLOW and O_NONBLOCK, and must then be a regular file: a link
there is never written through, and a FIFO or device never blocks the build."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from deployc.errors import UsageError
from deployc.storage.files import file_kind, read_bytes

MAX_REPORT_BYTES = 16 << 20


def check_step_summary(environ: Mapping[str, str] | None = None) -> None:
    """Before a build: $GITHUB_STEP_SUMMARY, when set, must name a file deployc can append to (exit 2, not later)."""
    target = (os.environ if environ is None else environ).get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    path = Path(target)
    if path.is_dir():
        raise UsageError(f"GITHUB_STEP_SUMMARY: '{path}' is a folder, not a file to append the job summary to")
    if os.path.lexists(path):
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(
                f"GITHUB_STEP_SUMMARY: '{path}' is {file_kind(mode)}, not a regular file; deployc never writes "
                "through a link or into a FIFO or device"
            )
    if not (path.parent.is_dir() and os.access(path if path.exists() else path.parent, os.W_OK)):
        raise UsageError(f"GITHUB_STEP_SUMMARY: cannot append to '{path}' (missing folder or not writable)")


def append_step_summary(report_md: str | Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """Append the report (a path to report.md, or its text) to $GITHUB_STEP_SUMMARY; None when unset.

    Appends, never overwrites: other steps of the same job write to the same file.
    """
    target = (os.environ if environ is None else environ).get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    if isinstance(report_md, Path):
        text = read_bytes(report_md, "report.md", MAX_REPORT_BYTES).decode("utf-8", errors="replace")
    else:
        text = str(report_md)
    path = Path(target)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        why = "a symbolic link: never written through" if exc.errno == errno.ELOOP else exc.strerror
        raise UsageError(f"GITHUB_STEP_SUMMARY: cannot append to '{path}' ({why})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(f"GITHUB_STEP_SUMMARY: '{path}' is {file_kind(mode)}, not a regular file; not written")
        data = (text if text.endswith("\n") else text + "\n").encode("utf-8")
        while data:
            data = data[os.write(fd, data) :]
    except OSError as exc:
        raise UsageError(f"GITHUB_STEP_SUMMARY: cannot append to '{path}' ({exc.strerror})") from None
    finally:
        os.close(fd)
    return path
