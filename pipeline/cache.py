"""Content-addressed cache of ONNX-level pass results.

key = sha256(input state + pass name + resolved config + the data the pass reads + library versions).
A hit restores the output graph and the pass's metrics without running the pass. Only passes that
declare `cacheable = True` (their whole output is the ONNX graph) are cached; torch-level passes are
not, because restoring a rewired nn.Module would need a pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.state import ModelState


def default_cache_dir() -> Path:
    return Path(os.environ.get("DEPLOYC_CACHE_DIR") or Path.home() / ".cache" / "deployc") / "passes"


def state_digest(state: ModelState) -> str:
    """Hash of what a pass reads from the state: the ONNX graph, else the torch module's structure and weights."""
    h = hashlib.sha256()
    for spec in state.inputs:
        h.update(repr(spec).encode())
    h.update(repr(sorted(state.facts)).encode())
    if state.onnx is not None:
        h.update(state.onnx.SerializeToString(deterministic=True))
    elif state.module is not None:
        h.update(repr(state.module).encode())  # architecture (layer types and shapes)
        for name, tensor in state.module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def dataset_digest(data: Any) -> str:
    if data is None:
        return "none"
    h = hashlib.sha256()
    for name in sorted(data.inputs):
        h.update(name.encode())
        h.update(np.ascontiguousarray(data.inputs[name]).tobytes())
    if data.labels is not None:
        h.update(np.ascontiguousarray(data.labels).tobytes())
    return h.hexdigest()


@dataclass
class CacheHit:
    proto: Any
    metrics: dict[str, Any]
    facts_added: list[str]


class PassCache:
    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = root or default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def key(self, state: ModelState, pass_name: str, config: dict[str, Any], data_digests: list[str]) -> str:
        from pipeline.manifest import library_versions

        versions = {k: v for k, v in library_versions().items() if k != "deployc"}
        payload = json.dumps([pass_name, config, data_digests, versions, _code_version()], sort_keys=True, default=str)
        return hashlib.sha256((state_digest(state) + payload).encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.onnx", folder / f"{key}.json"

    def load(self, key: str) -> CacheHit | None:
        import onnx

        model_path, meta_path = self._paths(key)
        if not (self.enabled and model_path.is_file() and meta_path.is_file()):
            self.misses += 1
            return None
        try:
            meta = json.loads(meta_path.read_text())
            proto = onnx.load(str(model_path))
        except Exception:
            self.misses += 1  # a damaged entry is a miss; the store below replaces it
            return None
        now = time.time()
        os.utime(meta_path, (now, now))  # recency for prune()
        self.hits += 1
        return CacheHit(proto, meta["metrics"], meta["facts_added"])

    def store(self, key: str, proto: Any, metrics: dict[str, Any], facts_added: list[str]) -> None:
        import onnx

        if not self.enabled:
            return
        model_path, meta_path = self._paths(key)
        model_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = model_path.with_suffix(f".tmp-{os.getpid()}")
        onnx.save(proto, str(tmp))
        os.replace(tmp, model_path)
        tmp = meta_path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"metrics": metrics, "facts_added": facts_added}, default=str))
        os.replace(tmp, meta_path)  # written last: an entry without its .json is never read

    def entries(self) -> list[tuple[Path, Path, float, int]]:
        """(model, meta, last use, bytes) for every complete entry."""
        out = []
        for meta in self.root.glob("*/*.json"):
            model = meta.with_suffix(".onnx")
            if model.is_file():
                out.append((model, meta, meta.stat().st_mtime, model.stat().st_size + meta.stat().st_size))
        return out

    def info(self) -> dict[str, Any]:
        entries = self.entries()
        return {"path": str(self.root), "entries": len(entries), "bytes": sum(e[3] for e in entries)}

    def prune(self, max_bytes: int) -> dict[str, Any]:
        """Delete least recently used entries until the cache holds at most max_bytes."""
        entries = sorted(self.entries(), key=lambda e: e[2], reverse=True)
        kept, removed = 0, 0
        for model, meta, _, size in entries:
            if kept + size <= max_bytes:
                kept += size
                continue
            meta.unlink(missing_ok=True)
            model.unlink(missing_ok=True)
            removed += 1
        for tmp in self.root.glob("*/*.tmp-*"):
            tmp.unlink(missing_ok=True)
        return {"removed": removed, "bytes": kept}


def _code_version() -> str:
    """Hash of deployc's own pass code, so editing a pass invalidates its cached results."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for folder in ("passes", "targets", "pipeline"):
        for path in sorted((root / folder).glob("*.py")):
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
