"""The out dir: deployc's only if deployc made it, one build at a time, everything staged then moved in.

Ownership: a marker file (.deployc-out.json) lists every file deployc wrote there. A folder holding other
files and no marker is refused unless --force, and even then deployc replaces or removes only files the
marker lists; it never follows a symbolic link inside the out dir. The marker is read as untrusted data (out dirs
come from CI caches and downloaded artifacts): an entry outside the out dir (`../x`, an absolute path) makes the
whole marker refused, never acted on.

The out dir is opened once (storage/folder.py): staging, publishing, the marker and the lock go through that
handle, so a path swapped for a link while a build runs redirects nothing; before publishing, the path must still
name the folder that was opened (else exit 2, nothing published).

Invariant: whenever manifest.json exists, every file it names is complete and matches its hash, and the
reports beside it describe the same build. A build killed before it publishes leaves its staging folder (the marker
names it) with progress.json: the artifacts finished so far, their gates and hashes; the next build removes it. Publishing removes the old manifest and the old reports first,
moves the new artifacts and reports in, and moves manifest.json in last.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from pathlib import Path
from types import TracebackType

from deployc.errors import UsageError
from deployc.storage.files import MAX_JSON_BYTES, file_kind, inside, read_json, relative_path
from deployc.storage.folder import Folder

LOCK_NAME = ".deployc.lock"
MARKER_NAME = ".deployc-out.json"
STAGING_PREFIX = ".deployc-staging-"
MANIFEST = "manifest.json"
REPORTS = ("report.md", "report.html", "junit.xml", "timings.json")  # what a person or CI reads beside the manifest
FIXED_NAMES = (MANIFEST, *REPORTS)
PROGRESS = "progress.json"  # in the staging folder only: what a build killed before publishing had finished
BUILD_KEY = ".deployc-build-key.json"  # the no-op rebuild key (deployc/driver/uptodate.py), published with the build


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _legacy_marker(out: Path) -> dict | None:
    """An out dir written by a deployc from before the marker: its manifest.json is deployc's when every artifact it
    lists is on disk with the hash it records; then that manifest, its artifacts and its reports are deployc's."""
    from deployc.storage.files import file_digest as sha256

    path = out / MANIFEST
    try:
        manifest = read_json(path, "--out", MAX_JSON_BYTES) if _regular(path) else None
        artifacts = [a for a in manifest["artifacts"] if a.get("path")] if isinstance(manifest, dict) else []
        if not artifacts or not isinstance(manifest.get("manifest_version"), int):
            return None
        for a in artifacts:
            file = inside(out, a["path"], "--out")
            if not _regular(file) or sha256(file) != a["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UsageError):
        return None
    beside = (*REPORTS, BUILD_KEY)
    files = [MANIFEST, *(n for n in beside if _regular(out / n))] + [a["path"] for a in artifacts]
    return {"written_by": "deployc", "files": files, "staging": []}


def _confined_marker(data: dict, path: Path) -> dict:
    """The marker, when every name it lists stays inside the out dir; else a UsageError (a marker deployc wrote
    never names '../x' or '/etc/x': acting on it would delete outside the out dir)."""
    entries = list(data["files"]) + list(data.get("staging") or [])
    for entry in entries:
        try:
            rel = relative_path(entry, "--out", path.parent)
        except UsageError:
            rel = None
        staging = entry in (data.get("staging") or [])
        if rel is None or (staging and (len(rel.parts) != 1 or not entry.startswith(STAGING_PREFIX))):
            raise UsageError(
                f"--out: '{path}' lists {entry!r}, which is not a file inside the out dir; deployc's marker never "
                "does (copied or tampered with?). Refused, nothing deleted: remove the marker or choose another --out"
            )
    return data


def read_marker(out: Path) -> dict | None:
    """The ownership record of an out dir deployc made, or None (no marker, a link, or not ours). A marker that
    names anything outside the out dir is a UsageError (see _confined_marker)."""
    path = out / MARKER_NAME
    if not os.path.lexists(path):
        return _legacy_marker(out)
    if not _regular(path):
        return None
    try:
        data = read_json(path, "--out", MAX_JSON_BYTES)
    except UsageError:
        return None
    if not isinstance(data, dict) or data.get("written_by") != "deployc" or not isinstance(data.get("files"), list):
        return None
    if not isinstance(data.get("staging", []), list):
        return None
    return _confined_marker(data, path)


def _refuse_special(out: Path, names: tuple[str, ...]) -> None:
    """deployc's own files there must be regular files: a link is never followed, a FIFO never opened."""
    for name in names:
        try:
            mode = os.lstat(out / name).st_mode
        except OSError:
            continue
        if stat.S_ISLNK(mode):
            raise UsageError(
                f"--out: '{out / name}' is a symbolic link; deployc never follows links inside its out dir. "
                "Remove it or choose another --out"
            )
        if name in (LOCK_NAME, MARKER_NAME, *FIXED_NAMES) and not stat.S_ISREG(mode):
            raise UsageError(
                f"--out: '{out / name}' is {file_kind(mode)}, not deployc's file (a read or lock there could block "
                "forever); remove it or choose another --out"
            )


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
    _refuse_special(out, (LOCK_NAME, MARKER_NAME, *FIXED_NAMES, *subdirs))
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
    """Context manager: claims and locks the out dir, gives a staging folder inside it, publishes atomically.
    Every write goes through the out dir's handle (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.created = False
        self.staging: Path | None = None
        self.folder: Folder | None = None
        self._staging: Folder | None = None
        self._lock_fd: int | None = None
        self._lock_existed = True
        self._marker_existed = True
        self._owned: set[str] = set()
        self._stagings: list[str] = []

    def __enter__(self) -> OutDir:
        self.created = not self.path.exists()
        self.folder = Folder.open(self.path, "--out", create=True)
        try:
            self._lock()
            marker = read_marker(self.path)
        except BaseException:
            self._release(failed=True)
            raise
        self._marker_existed = marker is not None
        self._owned = set(marker["files"]) if marker else set()
        for name in marker.get("staging", []) if marker else []:  # left by a build that was killed
            self._remove_tree(name)
        self._staging = self.folder.new_subfolder(STAGING_PREFIX)
        self.staging = self._staging.path
        self._stagings = [self.staging.name]
        self._write_marker()
        return self

    def _lock(self) -> None:
        where = self.path / LOCK_NAME
        self._lock_existed = os.path.lexists(where)
        try:  # O_NOFOLLOW: a link there is refused, never truncated through; O_NONBLOCK: a FIFO there never blocks
            fd = os.open(
                LOCK_NAME,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o644,
                dir_fd=self.folder.fd,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UsageError(f"--out: '{where}' is a symbolic link; refused") from None
            raise UsageError(f"--out: cannot create '{where}': {exc.strerror}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            self._lock_existed = True  # not deployc's to remove
            raise UsageError(f"--out: '{where}' is {file_kind(mode)}, not deployc's lock file; refused")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel even on kill -9
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            self._lock_existed = True
            raise UsageError(
                f"--out: another deployc build (pid {holder}) is writing to '{self.path}'; "
                "wait for it or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _remove_tree(self, name: str) -> None:
        """Remove a staging folder deployc made (the marker names it); never a link, never outside."""
        if "/" not in name and name.startswith(STAGING_PREFIX):
            self.folder.remove_tree(name)  # unlinks links inside; never follows them

    def _write_marker(self) -> None:
        payload = {"written_by": "deployc", "files": sorted(self._owned), "staging": self._stagings}
        self.folder.write(MARKER_NAME, (json.dumps(payload, indent=1) + "\n").encode())

    def _check_destination(self, rel: str) -> None:
        """A staged file may land only where no link sits on the way and no foreign file would be replaced."""
        parts = Path(rel).parts
        for i in range(1, len(parts)):
            st = self.folder.lstat("/".join(parts[:i]))
            where = self.path.joinpath(*parts[:i])
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise UsageError(f"--out: '{where}' is a symbolic link; deployc never follows it")
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise UsageError(f"--out: '{where}' is a file where deployc needs a folder")
        st = self.folder.lstat(rel)
        if st is not None:
            if rel not in self._owned:
                raise UsageError(f"--out: '{self.path / rel}' was not written by deployc; it is never replaced")
            if stat.S_ISDIR(st.st_mode):
                raise UsageError(f"--out: '{self.path / rel}' is a folder where deployc writes a file")

    def publish(self, only: str | None = None) -> list[str]:
        """Move every staged file into place: old manifest and reports out first, manifest.json in last.
        only='bench': publish files below bench/ alone (a command that adds its outputs to a finished build);
        the build's own files stay as they are, and only earlier files below bench/ count as stale."""
        self.folder.check_still_at_path()
        self._staging.unlink(PROGRESS)  # the manifest supersedes it
        staged = self._staging.files()
        if only is not None and any(not r.startswith(f"{only}/") for r in staged):
            raise ValueError(f"publish(only={only!r}) got files outside {only}/")
        for rel in staged:
            self._check_destination(rel)
        scope = self._owned if only is None else {r for r in self._owned if r.startswith(f"{only}/")}
        stale = sorted(scope - set(staged))
        self._owned |= set(staged)
        self._write_marker()  # written ahead: a kill below leaves every file deployc placed listed as its own
        if only is None:
            for rel in [MANIFEST, *REPORTS]:
                if rel in self._owned:
                    self.folder.unlink(rel)
        for rel in stale:
            self.folder.unlink(rel)
            self._owned.discard(rel)
        for parent in sorted({p.as_posix() for r in stale for p in Path(r).parents if p.parts}, key=len, reverse=True):
            self.folder.rmdir_empty(parent)  # a folder deployc made for files it no longer writes (bench/, onnx/)
        for rel in sorted(staged, key=lambda r: (r == MANIFEST, r in REPORTS, r)):
            self.folder.move_in(self._staging, rel)
        self._write_marker()
        return staged

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        moved = exc_type is not None and not self.folder.still_at_path()
        if self._staging is not None:
            self._staging.close()
            self._remove_tree(self.staging.name)
            self._stagings = []
            with contextlib.suppress(OSError):
                if exc_type is not None and not self._marker_existed and not self._owned:
                    self.folder.unlink(MARKER_NAME)  # a failed first build leaves no claim
                else:
                    self._write_marker()
        self._release(failed=exc_type is not None)
        if moved and not isinstance(exc, (KeyboardInterrupt, UsageError)):
            raise UsageError(
                f"--out: '{self.path}' was removed, moved or replaced (by a link?) while the build ran; "
                "nothing was published there"
            ) from exc

    def _release(self, failed: bool) -> None:
        if self._lock_fd is not None:
            if failed and not self._lock_existed:
                with contextlib.suppress(OSError):
                    self.folder.unlink(LOCK_NAME)
            os.close(self._lock_fd)
            self._lock_fd = None
        if failed and self.created and self.folder.still_at_path():
            with contextlib.suppress(OSError):
                self.path.rmdir()  # a failed first build leaves no empty out dir behind
        self.folder.close()
