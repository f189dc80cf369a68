"""The out dir: one build at a time (lock), artifacts staged then moved in, manifest.json last.

Invariant: whenever manifest.json exists, every file it names is complete and matches its hash.
A new build removes the old manifest before it replaces any artifact, so a build killed half-way
leaves no manifest (the next build completes normally), never one that names a missing or half file.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from deployc.errors import UsageError

LOCK_NAME = ".deployc.lock"


def check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: '{out}' exists and is not a folder")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise UsageError(f"--out: '{out}' is not writable")


class OutDir:
    """Context manager: locks the out dir and gives a staging folder inside it."""

    def __init__(self, path: Path):
        self.path = path
        self.created = False
        self.staging: Path | None = None
        self._lock_fd: int | None = None

    def __enter__(self) -> OutDir:
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--out: cannot create '{self.path}': {exc.strerror}") from None
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel even on kill -9
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(
                f"--out: another deployc build (pid {holder}) is writing to '{self.path}'; "
                "wait for it or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        for old in self.path.glob(".staging-*"):  # left by a build that was killed
            shutil.rmtree(old, ignore_errors=True)
        self.staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.path))
        return self

    def publish(self) -> None:
        """Move staged files into place; the old manifest goes first so it never names a replaced file."""
        (self.path / "manifest.json").unlink(missing_ok=True)
        for src in sorted(p for p in self.staging.rglob("*") if p.is_file()):
            dst = self.path / src.relative_to(self.staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock_fd is not None:
            if exc_type is not None and self.created:
                (self.path / LOCK_NAME).unlink(missing_ok=True)
            os.close(self._lock_fd)
        if exc_type is not None and self.created and self.path.exists() and not any(self.path.iterdir()):
            self.path.rmdir()  # a failed first build leaves no empty out dir behind
