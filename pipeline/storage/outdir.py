"""The out dir: deployc's only if deployc made it, one build at a time, everything staged then moved in.

Ownership: a marker file (.deployc-out.json) lists every file deployc wrote there. A folder holding other
files and no marker is refused unless --force, and even then deployc replaces or removes only files the
marker lists; it never follows a symbolic link inside the out dir.

Invariant: whenever manifest.json exists, every file it names is complete and matches its hash, and the
reports beside it describe the same build. Publishing removes the old manifest and the old reports first,
moves the new artifacts and reports in, and moves manifest.json in last.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from types import TracebackType

from deployc.errors import UsageError

LOCK_NAME = ".deployc.lock"
MARKER_NAME = ".deployc-out.json"
STAGING_PREFIX = ".deployc-staging-"
MANIFEST = "manifest.json"
REPORTS = ("report.md", "report.html", "junit.xml", "timings.json")  # what a person or CI reads beside the manifest
FIXED_NAMES = (MANIFEST, *REPORTS)
BUILD_KEY = ".deployc-build-key.json"  # the no-op rebuild key (deployc/driver/uptodate.py), published with the build


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _legacy_marker(out: Path) -> dict | None:
    """An out dir written by a deployc from before the marker: its manifest.json is deployc's when every artifact it
    lists is on disk with the hash it records; then that manifest, its artifacts and its reports are deployc's."""
    from deployc.storage.files import file_digest as sha256

    path = out / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() and not _is_link(path) else None
        artifacts = [a for a in manifest["artifacts"] if a.get("path")] if isinstance(manifest, dict) else []
        if not artifacts or not isinstance(manifest.get("manifest_version"), int):
            return None
        for a in artifacts:
            file = out / a["path"]
            if ".." in Path(a["path"]).parts or _is_link(file) or not file.is_file() or sha256(file) != a["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    beside = (*REPORTS, BUILD_KEY)
    files = [MANIFEST, *(n for n in beside if (out / n).is_file() and not _is_link(out / n))] + [
        a["path"] for a in artifacts
    ]
    return {"written_by": "deployc", "files": files, "staging": []}


def read_marker(out: Path) -> dict | None:
    """The ownership record of an out dir deployc made, or None (no marker, a link, or not ours)."""
    path = out / MARKER_NAME
    if not _is_link(path) and not path.exists():
        return _legacy_marker(out)
    if _is_link(path) or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != "deployc" or not isinstance(data.get("files"), list):
        return None
    return data


def check_out_dir(out: Path, force: bool = False, subdirs: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an out dir deployc must not write into (exit 2, nothing written)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: '{out}' exists and is not a folder")
    if not out.exists():
        probe = next((p for p in out.parents if p.exists()), Path("."))
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            raise UsageError(f"--out: cannot create '{out}': '{probe}' is not a writable folder")
        return
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out: '{out}' is not writable")
    for name in (LOCK_NAME, MARKER_NAME, *FIXED_NAMES, *subdirs):
        if _is_link(out / name):
            raise UsageError(
                f"--out: '{out / name}' is a symbolic link; deployc never follows links inside its out dir. "
                "Remove it or choose another --out"
            )
    marker = read_marker(out)
    if marker is not None:
        foreign = [n for n in FIXED_NAMES if (out / n).exists() and n not in marker["files"]]
        if foreign:
            raise UsageError(f"--out: '{out / foreign[0]}' was not written by deployc; it is never replaced")
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in (LOCK_NAME, MARKER_NAME))
    if not foreign:
        return
    if not force:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UsageError(
            f"--out: '{out}' already holds files deployc did not write ({shown}); choose a new or empty folder, "
            "or pass --force to build beside them (deployc then never replaces or removes a file it did not write)"
        )
    clash = [n for n in FIXED_NAMES if (out / n).exists()]
    if clash:
        raise UsageError(
            f"--out: '{out / clash[0]}' was not written by deployc; it is never replaced, even with --force. "
            "Move it or choose another --out"
        )


class OutDir:
    """Context manager: claims and locks the out dir, gives a staging folder inside it, publishes atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.created = False
        self.staging: Path | None = None
        self._lock_fd: int | None = None
        self._lock_existed = True
        self._marker_existed = True
        self._owned: set[str] = set()
        self._stagings: list[str] = []

    def __enter__(self) -> OutDir:
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--out: cannot create '{self.path}': {exc.strerror}") from None
        self._lock_existed = (self.path / LOCK_NAME).exists()
        try:  # O_NOFOLLOW: a lock file replaced by a link is refused, never truncated through
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UsageError(f"--out: '{self.path / LOCK_NAME}' is a symbolic link; refused") from None
            raise UsageError(f"--out: cannot create '{self.path / LOCK_NAME}': {exc.strerror}") from None
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
        marker = read_marker(self.path)
        self._marker_existed = marker is not None
        self._owned = set(marker["files"]) if marker else set()
        for name in marker.get("staging", []) if marker else []:  # left by a build that was killed
            self._remove_tree(name)
        self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.path))
        self._stagings = [self.staging.name]
        self._write_marker()
        return self

    def _remove_tree(self, name: str) -> None:
        """Remove a staging folder deployc made (the marker names it); never a link, never outside."""
        path = self.path / name
        if "/" in name or not name.startswith(STAGING_PREFIX) or _is_link(path) or not path.is_dir():
            return
        shutil.rmtree(path, ignore_errors=True)  # rmtree unlinks links inside; it never follows them

    def _write_marker(self) -> None:
        payload = {"written_by": "deployc", "files": sorted(self._owned), "staging": self._stagings}
        tmp = self.path / f"{MARKER_NAME}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(payload, indent=1) + "\n")
        os.replace(tmp, self.path / MARKER_NAME)  # rename replaces a link, never writes through it

    def _check_destination(self, rel: str) -> None:
        """A staged file may land only where no link sits on the way and no foreign file would be replaced."""
        dst = self.path / rel
        for parent in list(Path(rel).parents)[:-1]:
            if _is_link(self.path / parent):
                raise UsageError(f"--out: '{self.path / parent}' is a symbolic link; deployc never follows it")
            if (self.path / parent).exists() and not (self.path / parent).is_dir():
                raise UsageError(f"--out: '{self.path / parent}' is a file where deployc needs a folder")
        if _is_link(dst) or dst.exists():
            if rel not in self._owned:
                raise UsageError(f"--out: '{dst}' was not written by deployc; it is never replaced")
            if dst.is_dir() and not _is_link(dst):
                raise UsageError(f"--out: '{dst}' is a folder where deployc writes a file")

    def publish(self) -> list[str]:
        """Move every staged file into place: old manifest and reports out first, manifest.json in last."""
        staged = sorted(p.relative_to(self.staging).as_posix() for p in self.staging.rglob("*") if p.is_file())
        for rel in staged:
            self._check_destination(rel)
        stale = sorted(self._owned - set(staged))
        self._owned |= set(staged)
        self._write_marker()  # written ahead: a kill below leaves every file deployc placed listed as its own
        for rel in [MANIFEST, *REPORTS]:
            if rel in self._owned:
                self._unlink(rel)
        for rel in stale:
            self._unlink(rel)
            self._owned.discard(rel)
        for rel in sorted(staged, key=lambda r: (r == MANIFEST, r in REPORTS, r)):
            dst = self.path / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging / rel, dst)
        self._write_marker()
        return staged

    def _unlink(self, rel: str) -> None:
        path = self.path / rel
        if _is_link(path) or path.is_file():
            path.unlink()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.staging is not None:
            self._remove_tree(self.staging.name)
            self._stagings = []
            with contextlib.suppress(OSError):
                if exc_type is not None and not self._marker_existed and not self._owned:
                    (self.path / MARKER_NAME).unlink(missing_ok=True)  # a failed first build leaves no claim
                else:
                    self._write_marker()
        if self._lock_fd is not None:
            if exc_type is not None and not self._lock_existed:
                (self.path / LOCK_NAME).unlink(missing_ok=True)
            os.close(self._lock_fd)
        if exc_type is not None and self.created and self.path.exists() and not any(self.path.iterdir()):
            self.path.rmdir()  # a failed first build leaves no empty out dir behind
