"""A folder deployc writes into, opened once and worked on through its handle (openat-style).

Every operation is relative to the descriptor taken when the folder was opened and opens each path component
with O_NOFOLLOW: a link planted inside is never followed, and the folder's own path swapped for a link (or the
folder moved or removed) while deployc works cannot redirect a write; `still_at_path` tells whether the path
still names the folder that was opened (checked before publishing).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import Path, PurePosixPath

from deployc.errors import UsageError
from deployc.storage.files import temp_name

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class Folder:
    """An open folder; `key` names it in errors ('--out', 'pass cache', ...)."""

    def __init__(self, path: Path, key: str, fd: int):
        self.path, self.key, self.fd = Path(path), key, fd
        st = os.fstat(fd)
        self.identity = (st.st_dev, st.st_ino)

    @classmethod
    def open(cls, path: Path, key: str, create: bool = False) -> Folder:
        """Open (and with `create`, first make) the folder at `path`; the path itself may be a link the user gave
        (/tmp on some systems): it is followed once, here, and never again."""
        if create:
            try:
                Path(path).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"{key}: cannot create '{path}': {exc.strerror}") from None
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError as exc:
            raise UsageError(f"{key}: cannot open the folder '{path}': {exc.strerror}") from None
        return cls(path, key, fd)

    def new_subfolder(self, prefix: str) -> Folder:
        """A new, uniquely named folder directly inside (mode 0700), opened through this folder's handle."""
        while True:
            name = f"{prefix}{secrets.token_hex(6)}"
            try:
                os.mkdir(name, 0o700, dir_fd=self.fd)
                break
            except FileExistsError:
                continue
        return Folder(self.path / name, self.key, os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self.fd))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def still_at_path(self) -> bool:
        """Whether the path still names the folder that was opened (not removed, moved, or swapped for a link)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.identity

    def check_still_at_path(self) -> None:
        if not self.still_at_path():
            raise UsageError(
                f"{self.key}: '{self.path}' was removed, moved or replaced (by a link?) while deployc worked in it; "
                "nothing was published there"
            )

    def _parts(self, rel: str | PurePosixPath) -> tuple[str, ...]:
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or not parts:
            raise UsageError(f"{self.key}: '{rel}' is not a path inside '{self.path}'")
        return parts

    def _open_dirs(self, parts: tuple[str, ...], create: bool) -> int:
        """A new descriptor of the folder self/parts; each component opened with O_NOFOLLOW."""
        fd = os.dup(self.fd)
        where = self.path
        try:
            for part in parts:
                where = where / part
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        kind = "a symbolic link" if self._is_link_at(fd, part) else "a file"
                        raise UsageError(
                            f"{self.key}: '{where}' is {kind} where deployc needs a folder; deployc never follows "
                            "links inside its folders"
                        ) from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _is_link_at(fd: int, name: str) -> bool:
        try:
            return stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode)
        except OSError:
            return False

    def lstat(self, rel: str) -> os.stat_result | None:
        """The entry at `rel` itself (a link is not followed), or None when nothing is there; a link or file on the
        way there is an error (see _open_dirs)."""
        *dirs, name = self._parts(rel)
        try:
            fd = self._open_dirs(tuple(dirs), create=False)
        except FileNotFoundError:
            return None
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    def files(self) -> list[str]:
        """Relative paths of the regular files below the folder (links are listed as what they are: not walked)."""
        found = []
        for top, _, names, dir_fd in os.fwalk(".", dir_fd=self.fd, follow_symlinks=False):
            for name in names:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    found.append(PurePosixPath(top, name).as_posix().removeprefix("./"))
        return sorted(found)

    def write(self, rel: str, data: bytes) -> None:
        """Write a file atomically inside the folder (temp file O_EXCL|O_NOFOLLOW, then rename over `rel`)."""
        *dirs, name = self._parts(rel)
        fd = self._open_dirs(tuple(dirs), create=True)
        tmp = temp_name(name)
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd)
            try:
                with os.fdopen(out, "wb") as f:
                    f.write(data)
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=fd)
                raise
        finally:
            os.close(fd)

    def move_in(self, source: Folder, rel: str) -> None:
        """Rename source/rel to self/rel (both folders' handles; the same file system), creating folders on the way."""
        *dirs, name = self._parts(rel)
        src = source._open_dirs(tuple(dirs), create=False)
        try:
            dst = self._open_dirs(tuple(dirs), create=True)
            try:
                os.replace(name, name, src_dir_fd=src, dst_dir_fd=dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def unlink(self, rel: str) -> None:
        """Remove the file or link at `rel` (never a folder, never through a link); nothing there is fine."""
        st = self.lstat(rel)
        if st is None or stat.S_ISDIR(st.st_mode):
            return
        *dirs, name = self._parts(rel)
        fd = self._open_dirs(tuple(dirs), create=False)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)

    def remove_tree(self, name: str) -> None:
        """Remove the folder `name` directly inside, and everything in it (links inside are unlinked, never
        followed); a link or a file named so is left alone."""
        st = self.lstat(name)
        if st is None or not stat.S_ISDIR(st.st_mode) or "/" in name:
            return
        shutil.rmtree(name, dir_fd=self.fd, ignore_errors=True)

    def rmdir_empty(self, rel: str) -> None:
        """Remove the folder `rel` when it is empty (a folder deployc made for files it since removed)."""
        *dirs, name = self._parts(rel)
        try:
            fd = self._open_dirs(tuple(dirs), create=False)
        except (OSError, UsageError):
            return
        try:
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=fd)
        finally:
            os.close(fd)
