"""Is an out dir already the result of this exact build? Answered before any heavy import (no torch, onnx,
onnxruntime), so `deployc build` of an unchanged config returns in well under a second.

The build key is a sha256 over (README "What a no-op rebuild hashes" lists the same):
- the resolved config (every key after validation, paths as written) and the `--target` selection;
- every file the config names: model.weights / model.onnx (and the external-data files it names) /
  model.exported, and the .npz data files — read through the I/O boundary (regular files only: a FIFO or a
  /proc file is keyed as what it is, never read), by content up to HASH_CONTENT_LIMIT (512 MiB) and by size,
  inode and modification time beyond it (a 1 TB file is not read to decide whether to rebuild);
- the source of every Python file a factory string names (model.factory, data.* 'file.py:callable' or
  'package.module:callable'), of the other .py files in its folder (a factory often imports its neighbours) and
  of the packages below that folder (sub-folders holding an __init__.py), at most MAX_SOURCES files;
- deployc's own source files, the name and version of every installed distribution (the *.dist-info folders
  on sys.path: torch, onnxruntime, plugins...), the Python version, and the CPU (architecture and feature
  flags: int8 artifacts are tuned for the build machine's CPU).
Not hashed: files a factory reads at run time, and environment variables a factory reads (os.environ): change
its source, or pass --no-cache, to rebuild.

A build stores its key in OUT/.deployc-build-key.json together with the sha256 of the files it wrote beside
the artifacts; the out dir is up to date when that key equals the current one, no build holds its lock,
manifest.json and the key file are regular files, and every artifact and report matches its recorded hash.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import stat
import sys
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from deployc.core.config import BuildConfig, load_config
from deployc.errors import UsageError
from deployc.storage.files import file_digest, input_digest, open_regular, read_json, relative_path
from deployc.storage.outdir import BUILD_KEY, LOCK_NAME, MARKER_NAME, read_marker

KEY_FILE = BUILD_KEY
KEY_VERSION = 1
REPORT_FILES = ("report.md", "report.html", "junit.xml", "timings.json", "manifest.json")
_DEPLOYC_PACKAGES = (
    "deployc",
    "deployc.passes",
    "deployc.targets",
    "deployc.commands",
    "deployc.examples",
    "deployc.sweep",
)


MAX_SOURCES = 2000  # .py files hashed for one factory folder; beyond it, the key says so and never matches


def _sources_in(folder: Path) -> list[Path]:
    """The .py files of `folder` and of the packages below it (sub-folders with an __init__.py, recursively;
    hidden folders and __pycache__ skipped); a folder past MAX_SOURCES files raises (the build then runs)."""
    found: list[Path] = []
    todo = [folder]
    while todo:
        current = todo.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.endswith(".py") and entry.is_file():
                found.append(Path(entry.path))
            elif (
                entry.is_dir(follow_symlinks=False)
                and not entry.name.startswith((".", "__pycache__"))
                and os.path.isfile(os.path.join(entry.path, "__init__.py"))
            ):
                todo.append(Path(entry.path))
        if len(found) > MAX_SOURCES:
            raise ValueError(f"{folder}: more than {MAX_SOURCES} Python files in the factory's packages")
    return sorted(found)


def _module_file(name: str) -> Path | None:
    """The file of module `name`: looked up below its top-level package's folders without running any of its
    code; when that fails (namespace tricks, custom finders), found by the import system, which runs the
    parent packages' __init__ (a cost, never a wrong answer)."""
    top, *rest = name.split(".")
    try:
        spec = find_spec(top)
        for base in (spec.submodule_search_locations or ()) if spec and rest else ():
            path = Path(base, *rest)
            for candidate in (path.with_suffix(".py"), path / "__init__.py"):
                if candidate.is_file():
                    return candidate
        spec = spec if not rest else find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec and spec.origin and spec.origin not in ("built-in", "frozen") else None


def _factory_sources(spec: str | None, base_dir: Path) -> list[Path]:
    """The Python files behind a 'file.py:callable' or 'module:callable' string: its file and its neighbours."""
    if not spec or ":" not in spec:
        return []
    target = spec.rpartition(":")[0]
    if target.endswith(".py"):
        path = Path(target) if Path(target).is_absolute() else base_dir / target
    else:
        path = _module_file(target)
    return _sources_in(path.parent) if path is not None and path.is_file() else []


_LOCATION = re.compile(rb"\x0a\x08location\x12([\x01-\x7f])")  # ONNX external_data {key: "location", value: ...}


def _external_data(onnx_path: Path) -> list[Path]:
    """The external-data files an .onnx model names; found by scanning its bytes for the protobuf entry (in
    bounded chunks, through the I/O boundary: a regular file only), because parsing it with onnx would cost the
    slow onnx import this module exists to avoid."""
    names, tail = set(), b""
    fd = open_regular(onnx_path, "model.onnx")
    try:
        while chunk := os.read(fd, 8 << 20):
            blob = tail + chunk
            names |= {blob[m.end() : m.end() + m.group(1)[0]] for m in _LOCATION.finditer(blob)}
            tail = blob[-256:]  # an entry cut by the chunk boundary is found in the next round
    finally:
        os.close(fd)
    shown = {n.decode(errors="replace") for n in names}
    return sorted(onnx_path.parent / n for n in shown if n and (onnx_path.parent / n).is_file())


def _input_files(config: BuildConfig) -> list[Path]:
    m, files = config.model, []
    for key in ("weights", "onnx", "exported"):
        value = getattr(m, key)
        if value is not None:
            path = config.resolve(value)
            files.append(path)
            if key == "onnx" and path.is_file():
                files += _external_data(path)
    files += _factory_sources(m.factory, config.base_dir)
    for source in (config.data.train, config.data.calibration, config.data.validation):
        if source is not None and source.kind == "npz":
            files.append(config.resolve(source.path))
        elif source is not None and source.kind == "factory":
            files += _factory_sources(source.path, config.base_dir)
    return files


def _deployc_sources() -> list[tuple[str, Path]]:
    """(label, file) for every .py/.yaml file of deployc's packages and their sub-packages; a file reached from two
    packages (the wheel nests deployc.passes inside deployc's folder) counts once."""
    found: dict[Path, str] = {}
    for name in _DEPLOYC_PACKAGES:
        spec = find_spec(name)
        for base in (spec.submodule_search_locations or ()) if spec else ():
            for path in sorted(Path(base).rglob("*")):
                if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                    found.setdefault(path.resolve(), f"{name}/{path.relative_to(base).as_posix()}")
    return sorted(((label, path) for path, label in found.items()), key=lambda item: item[0])


def _distributions() -> list[str]:
    """Name-version of every installed distribution, from the *.dist-info folder names in site-packages (no
    metadata parsing; other sys.path entries, e.g. the current folder, would make the key depend on the caller)."""
    folders = {p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and os.path.isdir(p)}
    return sorted(n for p in folders for n in os.listdir(p) if n.endswith((".dist-info", ".egg-info")))


def _cpu() -> str:
    """Architecture and feature flags of this CPU (int8 artifacts are tuned for them)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1] for ln in f if ln.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()} {' '.join(sorted(flags.split()))}"


def build_key(config: BuildConfig, targets: list[str] | None = None) -> str:
    """sha256 of everything that defines the build (see the module docstring); a missing file hashes as 'missing'."""
    h = hashlib.sha256()

    def add(label: str, value: Any) -> None:
        h.update(json.dumps([label, value], sort_keys=True, default=str).encode())

    add("key", KEY_VERSION)
    add("config", config.model_dump(mode="json", by_alias=True, exclude={"base_dir"}))
    add("base_dir", str(config.base_dir.resolve()))
    add("targets", sorted(targets) if targets else None)
    for path in _input_files(config):
        add(str(path.resolve()), input_digest(path))
    for label, path in _deployc_sources():
        add(label, file_digest(path))
    add("distributions", _distributions())
    add("python", sys.version)
    add("cpu", _cpu())
    return h.hexdigest()


def write_key(out_dir: Path, key: str) -> None:
    """Record the key and the hashes of the reports beside the artifacts (called after manifest.json is written)."""
    from deployc.storage.files import write_json_atomic

    files = {name: file_digest(out_dir / name) for name in REPORT_FILES if (out_dir / name).is_file()}
    write_json_atomic(out_dir / KEY_FILE, {"version": KEY_VERSION, "key": key, "files": files})


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _locked(out_dir: Path) -> bool:
    """True when a build holds the out dir's lock right now (checked without creating or writing anything)."""
    from deployc.storage.outdir import LOCK_NAME

    try:  # O_NONBLOCK: a FIFO planted as the lock file never blocks this check
        fd = os.open(out_dir / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return True  # not deployc's lock: the full build refuses it with its message
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@dataclass
class UpToDate:
    """An out dir whose build matches the current inputs: what the CLI reports instead of building."""

    out_dir: Path
    manifest: dict[str, Any]
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 3 if self.manifest.get("status") == "failed" else 0


def _not_owned(out_dir: Path) -> str | None:
    """Why the out dir is not exactly what deployc left there: no ownership marker (a folder from an older
    deployc), a staging folder of a killed build, or a file deployc did not write; None when clean."""
    marker_path = out_dir / MARKER_NAME
    marker = read_marker(out_dir) if _regular(marker_path) else None
    if marker is None:
        return "no ownership marker"
    if any((out_dir / s).exists() for s in marker.get("staging", [])):
        return "a killed build left its staging folder"
    owned = set(marker["files"]) | {MARKER_NAME, LOCK_NAME, KEY_FILE}
    for path in out_dir.rglob("*"):
        if (path.is_symlink() or not path.is_dir()) and path.relative_to(out_dir).as_posix() not in owned:
            return f"{path.relative_to(out_dir)} was not written by deployc"
    return None


def stale_reason(out_dir: Path, key: str) -> str | None:
    """None when the out dir holds a finished build with this key and intact files, else why not."""
    key_path, manifest_path = out_dir / KEY_FILE, out_dir / "manifest.json"
    if not (_regular(key_path) and _regular(manifest_path)):
        return "no finished build there"
    try:
        stored = read_json(key_path, "build key")
        manifest = read_json(manifest_path, "manifest")
        if not isinstance(stored, dict) or not isinstance(manifest, dict):
            raise ValueError("not a mapping")
    except (OSError, ValueError, UsageError):
        return "its key file or manifest is unreadable"
    if stored.get("key") != key:
        return "inputs changed"
    if _locked(out_dir):
        return "another build is writing it"
    foreign = _not_owned(out_dir)
    if foreign is not None:
        return foreign  # the full build then applies the out-dir rules (refuse, or --force) and cleans up
    for name, digest in stored.get("files", {}).items():
        path = out_dir / name
        if name not in REPORT_FILES or not _regular(path) or file_digest(path) != digest:
            return f"{name} changed since the build"
    for art in manifest.get("artifacts", []):
        if not art.get("path"):
            continue
        try:
            path = out_dir / relative_path(art["path"], "manifest", out_dir)
        except UsageError:
            return f"{art['path']!r} is not a file inside the out dir"
        if not _regular(path) or path.stat().st_size != art.get("bytes") or file_digest(path) != art.get("sha256"):
            return f"{art['path']} changed since the build"
    return None


def up_to_date(config_path: Path, out: Path | None, targets: list[str] | None) -> UpToDate | None:
    """The finished build in the out dir when it matches the current inputs, else None (then build).

    Anything unexpected (a config that does not load, a missing file) also gives None: the full build
    reports it with its usual error."""
    try:
        config = load_config(config_path)
        out_dir = Path(out) if out is not None else Path("deployc-out") / config.name
        if stale_reason(out_dir, build_key(config, targets)) is not None:
            return None
        manifest = read_json(out_dir / "manifest.json", "manifest")
        timings_path = out_dir / "timings.json"
        timings = read_json(timings_path, "timings") if _regular(timings_path) else {}
    except Exception:
        return None
    return UpToDate(out_dir, manifest, timings)
