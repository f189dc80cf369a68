"""Content-addressed cache of ONNX-level pass results, on disk across builds and in memory within one.

key = sha256(input state + pass name + resolved config + the data the pass reads + library versions).
A hit restores the output graph and the pass's metrics without running the pass. Only passes that
declare `cacheable = True` (their whole output is the ONNX graph) are cached; torch-level passes are
not, because restoring a rewired nn.Module would need a pickle.

The in-memory memo lives as long as one build's PassCache and is used even with `--no-cache`: when two
targets run the same pass on the same input (export and simplify for onnx and tensorrt, fp16 for both),
it runs once. It keeps the output graph itself, so the second user shares it (passes never mutate input).

On disk (DEPLOYC_CACHE_DIR/passes, default ~/.cache/deployc/passes) entries live in a storage.cache_store folder:
deployc's only when its marker is there (else the build warns and runs without the disk cache), and pruned only
of entries whose record proves deployc wrote them. After each build that stored an entry the cache is pruned,
least recently used first, to DEFAULT_MAX_BYTES (also `cache prune`'s default).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployc.core.state import ModelState, Table
from deployc.errors import UsageError, first_line
from deployc.storage.cache_store import CacheStore
from deployc.storage.files import input_digest, size_text

DEFAULT_MAX_BYTES = 1 << 30  # kept after every build and by `cache prune` without --max-size (README says so)


def default_cache_dir() -> Path:
    return Path(os.environ.get("DEPLOYC_CACHE_DIR") or Path.home() / ".cache" / "deployc") / "passes"


def module_digest(module: Any) -> str:
    """Hash of what defines a torch module: its architecture (repr), the code of every module class in it (a
    forward() edit changes no repr and no weight), and every weight and buffer."""
    import torch

    h = hashlib.sha256(repr(module).encode())
    for cls in sorted({type(m) for m in module.modules()}, key=lambda c: (c.__module__, c.__qualname__)):
        h.update(class_code_digest(cls).encode())
    for m in module.modules():
        try:  # fx GraphModules (torch.export's .module()) and TorchScript modules: their forward is generated code
            code = getattr(m, "code", None)
        except Exception:  # a ScriptModule without a forward
            code = None
        if isinstance(code, str):
            h.update(code.encode())
    for name, value in module.state_dict().items():
        h.update(name.encode())
        if not isinstance(value, torch.Tensor):
            h.update(repr(value).encode())
            continue
        t = value.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        try:
            h.update(t.numpy().tobytes())
        except (TypeError, RuntimeError):  # dtypes numpy cannot hold (bfloat16, quantized): their raw bytes
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@functools.cache
def class_code_digest(cls: type) -> str:
    """Hash of the source a module class runs: the file that defines it and the other .py files of its folder (a
    forward() often calls helpers of its neighbours, as the up-to-date key's factory files assume). torch's own
    classes are covered by its version in the key. Cached per class object: a re-imported file gives new classes."""
    name = cls.__module__ or ""
    if name == "torch" or name.startswith("torch."):
        return name + "." + cls.__qualname__
    h = hashlib.sha256(f"{name}.{cls.__qualname__}".encode())
    try:
        path = Path(inspect.getfile(cls)).resolve()
    except (TypeError, OSError):  # defined in a REPL or exec'd string: its source, when inspect can find it
        with contextlib.suppress(TypeError, OSError):
            h.update(inspect.getsource(cls).encode())
        return h.hexdigest()
    for neighbour in sorted({path, *path.parent.glob("*.py")}):  # read through the I/O boundary: never a FIFO
        h.update(neighbour.name.encode() + input_digest(neighbour).encode())
    return h.hexdigest()


def state_digest(state: ModelState) -> str:
    """Hash of what a pass reads from the state: the ONNX graph, else the torch module's structure and weights."""
    h = hashlib.sha256()
    for spec in state.inputs:
        h.update(repr(spec).encode())
    h.update(repr(sorted(state.facts)).encode())
    if state.onnx is not None:
        h.update(state.onnx.SerializeToString(deterministic=True))
    elif state.module is not None:
        h.update(module_digest(state.module).encode())
    return h.hexdigest()


def dataset_digest(data: Any) -> str:
    if data is None:
        return "none"
    return data.digest  # hashed once per Dataset: every cacheable pass of every remedy trial reads it


@dataclass
class CacheHit:
    proto: Any
    modified: bool
    metrics: dict[str, Any]
    tables: tuple[Table, ...]
    facts_added: list[str]


class PassCache:
    """The cache is only a cache: a damaged entry is dropped and rebuilt, an unusable folder means building
    without it, and neither ever fails a build (both are logged through `warn`)."""

    def __init__(self, root: Path | None = None, enabled: bool = True, warn: Any = None):
        self.root = root or default_cache_dir()
        self.disk = CacheStore(self.root, ".onnx")
        self.enabled = enabled  # the disk cache; the in-memory memo is always on
        self.warn = warn or (lambda message: None)
        self.hits = 0
        self.misses = 0
        self.memo_hits = 0
        self.stored = 0
        self._memo: dict[str, CacheHit] = {}

    @classmethod
    def for_build(cls, enabled: bool, warn: Any) -> PassCache:
        """The build's cache, disabled with a warning when its folder cannot be created, written or claimed."""
        cache = cls(enabled=enabled, warn=warn)
        if enabled:
            try:
                why = cache.disk.claim()
                if why is None:
                    with tempfile.NamedTemporaryFile(dir=cache.root, prefix=".probe-"):
                        pass
            except OSError as exc:
                why = exc.strerror or str(exc)
            if why is not None:
                cache.enabled = False
                warn(f"warning: pass cache '{cache.root}' is unusable ({why}); building without it")
        return cache

    def key(self, state: ModelState, p: Any, config: dict[str, Any], data_digests: list[str]) -> str:
        from deployc.core.versions import library_versions

        versions = {k: v for k, v in library_versions().items() if k != "deployc"}
        code = code_version(type(p))
        payload = json.dumps([p.name, config, data_digests, versions, code], sort_keys=True, default=str)
        return hashlib.sha256((state_digest(state) + payload).encode()).hexdigest()

    def load(self, key: str) -> CacheHit | None:
        """The memo's entry for `key`, else the disk's (when enabled), else None."""
        if key in self._memo:
            self.memo_hits += 1
            return self._memo[key]
        hit = self._load_disk(key)
        if hit is not None:
            self._memo[key] = hit
        return hit

    def _load_disk(self, key: str) -> CacheHit | None:
        import onnx

        if not (self.enabled and self.disk.has(key)):
            self.misses += 1
            return None
        try:
            meta, data = self.disk.read(key)
            proto = onnx.load_model_from_string(data)
            tables = tuple(
                Table(t["title"], tuple(t["header"]), tuple(map(tuple, t["rows"])), frozenset(t["timed"]))
                for t in meta.get("tables", [])
            )
            hit = CacheHit(proto, meta.get("modified", True), dict(meta["metrics"]), tables, list(meta["facts_added"]))
        except Exception as exc:
            self.misses += 1
            if isinstance(exc, (FileNotFoundError, UsageError)) and not self.disk.has(key):
                return None  # pruned by `deployc cache prune` meanwhile
            self.warn(
                f"warning: pass cache entry {self.disk.paths(key)[0]} is damaged ({first_line(exc)}); "
                "dropped and rebuilt"
            )
            self.disk.drop(key)
            return None
        self.hits += 1
        return hit

    def store(
        self,
        key: str,
        proto: Any,
        modified: bool,
        metrics: dict[str, Any],
        tables: tuple[Table, ...],
        facts_added: list[str],
    ) -> None:
        self._memo[key] = CacheHit(proto, modified, dict(metrics), tuple(tables), list(facts_added))
        if not self.enabled:
            return
        saved = [{**t.to_json(), "timed": sorted(t.timed)} for t in tables]
        record = {"modified": modified, "metrics": metrics, "tables": saved, "facts_added": facts_added}
        try:
            self.disk.write(key, proto.SerializeToString(), record)
            self.stored += 1
        except OSError as exc:
            self.enabled = False
            self.warn(
                f"warning: cannot write to the pass cache '{self.root}' ({exc.strerror or exc}); continuing without it"
            )

    def info(self) -> dict[str, Any]:
        self.disk.check_ours()
        entries = self.disk.entries()
        return {
            "path": str(self.root),
            "entries": len(entries),
            "bytes": sum(e[3] for e in entries),
            "default_max_bytes": DEFAULT_MAX_BYTES,
        }

    def prune(self, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
        """Delete least recently used entries until the cache holds at most max_bytes (see CacheStore.prune)."""
        return self.disk.prune(max_bytes)

    def trim(self) -> None:
        """After a build that stored entries: prune to DEFAULT_MAX_BYTES (never fails the build)."""
        if not (self.enabled and self.stored):
            return
        try:
            result = self.prune(DEFAULT_MAX_BYTES)
        except (OSError, UsageError) as exc:
            self.warn(f"warning: could not prune the pass cache '{self.root}' ({exc}); it may grow")
            return
        if result["removed"]:
            self.warn(
                f"pass cache: removed {result['removed']} least recently used entries "
                f"(kept {size_text(result['bytes'])} of at most {size_text(DEFAULT_MAX_BYTES)})"
            )


# packages that sit inside deployc's folder once installed as a wheel; each pass's own folder is hashed apart
_PLUGIN_FOLDERS = ("passes", "targets", "commands", "examples", "sweep")


@functools.cache
def code_version(pass_cls: type) -> str:
    """Hash of the driver's code (every sub-package) and of every module beside the pass's own (the helpers it
    calls), so editing either invalidates the pass's cached results. Works for third-party passes and the installed
    layout alike."""
    driver = Path(__file__).resolve().parents[1]
    files = [p for p in driver.rglob("*.py") if p.relative_to(driver).parts[0] not in _PLUGIN_FOLDERS]
    files += Path(inspect.getfile(pass_cls)).resolve().parent.glob("*.py")
    h = hashlib.sha256()
    for path in sorted(set(files)):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]
