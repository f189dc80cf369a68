"""A content-addressed folder deployc owns: entries `xx/<key><suffix>` (the blob) and `xx/<key>.json` (its record).

deployc uses a folder only when it made it (or found it empty, or laid out exactly as an older deployc's cache: only
`xx/<sha256>.onnx|.json` entries) and left its marker `.deployc-cache.json`; a folder holding other files and no
marker is never written to, listed or pruned. A record names its format, key, size
and sha256, so prune deletes only entries it can prove it wrote; links are never followed, other files never
touched. The pass cache (compiler/pass_cache.py) keeps its entries here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from deployc.errors import UsageError
from deployc.storage.files import MAX_JSON_BYTES, json_text, read_bytes, read_json, write_bytes_atomic

CACHE_MARKER = ".deployc-cache.json"
ENTRY_FORMAT = 1
MAX_ENTRY_BYTES = 2 << 30  # a blob deployc stores (an ONNX protobuf) cannot be larger
_KEY = re.compile(r"^[0-9a-f]{64}$")
_TEMP = re.compile(r"^\.[0-9a-f]{64}\.\w+\.tmp-\d+-[0-9a-f]{8}$")  # storage.files.temp_name of an entry
_OLD_TEMP = re.compile(r"^[0-9a-f]{64}\.tmp-[\w.-]+-\d+$")  # an older deployc's temp file (<key>.tmp-<host>-<pid>)
_ROOT_FILES = ("tensorrt.timing-cache",)  # what the tensorrt target keeps beside the entries


def _regular(path: Path | str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _scandir(folder: Path) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []


class CacheStore:
    def __init__(self, root: Path, suffix: str):
        self.root, self.suffix = Path(root), suffix

    def marked(self) -> bool:
        """Whether the folder carries deployc's marker (a regular file saying so)."""
        marker = self.root / CACHE_MARKER
        if not _regular(marker):
            return False
        try:
            data = read_json(marker, "cache", MAX_JSON_BYTES)
        except UsageError:
            return False
        return isinstance(data, dict) and data.get("written_by") == "deployc"

    def claim(self) -> str | None:
        """Make the folder deployc's (create it, or mark it when empty); why not, when it is someone else's."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.marked():
            return None
        if os.path.lexists(self.root / CACHE_MARKER) or not self._earlier_cache():
            return f"it holds files and no deployc cache marker ({CACHE_MARKER}); deployc writes only a cache it made"
        payload = {"written_by": "deployc", "what": "cache", "entry_format": ENTRY_FORMAT}
        write_bytes_atomic(self.root / CACHE_MARKER, json_text(payload).encode())
        return None

    def _earlier_cache(self) -> bool:
        """Whether the unmarked folder is empty or holds only what a deployc from before the marker wrote there:
        folders named by two hex digits holding <sha256>.<suffix>/.json entries (and deployc's temp files)."""
        for top in _scandir(self.root):
            if top.name.startswith(".probe-") or top.name in _ROOT_FILES:
                continue
            if len(top.name) != 2 or not top.is_dir(follow_symlinks=False):
                return False
            for entry in _scandir(Path(top.path)):
                stem, _, ext = entry.name.partition(".")
                ours = (_KEY.match(stem) and ext in ("json", self.suffix.lstrip("."))) or _OLD_TEMP.match(entry.name)
                if not ours or not entry.is_file(follow_symlinks=False):
                    return False
        return True

    def check_ours(self) -> None:
        """A folder that exists and is not a deployc cache is refused by `cache info`/`cache prune` (exit 2)."""
        if self.root.exists() and not self.marked() and (not self.root.is_dir() or any(os.scandir(self.root))):
            raise UsageError(
                f"cache: '{self.root}' is not a deployc cache (no {CACHE_MARKER} marker); deployc lists and prunes "
                "only a cache it made. Point DEPLOYC_CACHE_DIR at another folder"
            )

    def paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}{self.suffix}", folder / f"{key}.json"

    def has(self, key: str) -> bool:
        """Whether the entry is there: two regular files in a real folder (a link planted as the folder is never
        read through)."""
        blob, record = self.paths(key)
        try:
            real_folder = stat.S_ISDIR(os.lstat(blob.parent).st_mode)
        except OSError:
            return False
        return real_folder and _regular(blob) and _regular(record)

    def read(self, key: str) -> tuple[dict[str, Any], bytes]:
        """(record, blob) of an entry; ValueError/UsageError when it is damaged or not deployc's."""
        blob_path, record_path = self.paths(key)
        if not self.has(key):
            raise FileNotFoundError(blob_path)
        record = read_json(record_path, "cache", MAX_JSON_BYTES)
        data = read_bytes(blob_path, "cache", MAX_ENTRY_BYTES)
        if not _record_of(record, key, legacy=True) or hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise ValueError("its content does not match the hash it was stored with")
        with contextlib.suppress(OSError):
            now = time.time()
            os.utime(record_path, (now, now), follow_symlinks=False)  # recency for prune()
        return record, data

    def write(self, key: str, data: bytes, record: dict[str, Any]) -> None:
        """Store an entry (blob first, record last: an entry without its record is never read); OSError on failure."""
        blob_path, record_path = self.paths(key)
        folder = blob_path.parent
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        if not stat.S_ISDIR(os.lstat(folder).st_mode):  # a link planted as the entry folder is never written through
            raise OSError(f"'{folder}' is not a folder deployc made")
        full = {
            "written_by": "deployc",
            "entry_format": ENTRY_FORMAT,
            "key": key,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            **record,
        }
        write_bytes_atomic(blob_path, data)
        write_bytes_atomic(record_path, json.dumps(full, default=str).encode())

    def drop(self, key: str) -> None:
        """Remove the entry at deployc's own key paths (a link there is unlinked, never followed)."""
        for path in reversed(self.paths(key)):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    def entries(self) -> list[tuple[Path, Path, float, int]]:
        """(blob, record, last use, bytes) of every entry laid out as deployc writes them: a regular <key>.json in a
        real folder named after its key's first two digits. Nothing when the folder is not a marked deployc cache."""
        if not self.marked():
            return []
        out = []
        for folder in _scandir(self.root):
            if len(folder.name) != 2 or not folder.is_dir(follow_symlinks=False):
                continue
            for entry in _scandir(Path(folder.path)):
                stem, _, ext = entry.name.partition(".")
                if ext != "json" or not _KEY.match(stem) or stem[:2] != folder.name:
                    continue
                record, blob = Path(entry.path), Path(folder.path) / f"{stem}{self.suffix}"
                try:
                    st = os.lstat(record)
                    size = os.lstat(blob).st_size if _regular(blob) else 0
                except OSError:
                    continue  # removed meanwhile
                if stat.S_ISREG(st.st_mode):
                    out.append((blob, record, st.st_mtime, st.st_size + size))
        return out

    def prune(self, max_bytes: int) -> dict[str, Any]:
        """Delete least recently used entries until the folder holds at most max_bytes; an entry only when its record
        proves deployc wrote it. Safe beside running builds: a build whose entry vanishes rebuilds it, and temp files
        younger than an hour may be a build's write."""
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.check_ours()
        kept, removed = 0, 0
        for blob, record, _, size in sorted(self.entries(), key=lambda e: e[2], reverse=True):
            if kept + size <= max_bytes or not self._proven(record):
                kept += size
                continue
            for path in (record, blob):
                with contextlib.suppress(FileNotFoundError):
                    if _regular(path):
                        path.unlink()
            removed += 1
        for folder in _scandir(self.root) if self.marked() else []:
            if len(folder.name) != 2 or not folder.is_dir(follow_symlinks=False):
                continue
            for tmp in _scandir(Path(folder.path)):
                with contextlib.suppress(OSError):
                    old = _regular(tmp.path) and time.time() - os.lstat(tmp.path).st_mtime > 3600
                    if _TEMP.match(tmp.name) and old:
                        os.unlink(tmp.path)
        return {"removed": removed, "bytes": kept}

    def _proven(self, record_path: Path) -> bool:
        """Whether the entry's record proves deployc wrote it: its format and key, and its blob's size."""
        key = record_path.name.partition(".")[0]
        try:
            record = read_json(record_path, "cache", MAX_JSON_BYTES)
        except UsageError:
            return False
        blob = record_path.with_name(f"{key}{self.suffix}")
        if _record_of(record, key):
            return not os.path.lexists(blob) or (_regular(blob) and os.lstat(blob).st_size == record.get("bytes"))
        if not _record_of(record, key, legacy=True) or not _regular(blob):
            return False
        try:  # an adopted older entry's record has no key: its blob must hash to what it says
            return hashlib.sha256(read_bytes(blob, "cache", MAX_ENTRY_BYTES)).hexdigest() == record.get("sha256")
        except UsageError:
            return False


_LEGACY_KEYS = frozenset({"sha256", "modified", "metrics", "tables", "facts_added"})  # a record before the marker


def _record_of(record: Any, key: str, legacy: bool = False) -> bool:
    """Whether `record` is the one deployc writes for the entry `key` (with `legacy`, also an older deployc's record,
    which names no key: the caller then checks the blob's hash)."""
    if not isinstance(record, dict):
        return False
    if legacy and set(record) == _LEGACY_KEYS:
        return True
    return (
        record.get("written_by") == "deployc"
        and record.get("entry_format") == ENTRY_FORMAT
        and record.get("key") == key
    )
