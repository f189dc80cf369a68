"""manifest.json: every artifact with its hash, size, I/O specs, runtime, metrics and gate."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from deployc.contracts import Artifact
from deployc.uptodate import file_digest as sha256  # one file hash for manifests and no-op rebuild checks

MANIFEST_VERSION = 1
_LIBRARIES = (
    "deployc",
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "onnx-ir",
    "onnxsim",
    "litert-torch",
    "ai-edge-quantizer",
    "ai-edge-litert",
    "tensorrt",
    "torch-pruning",
)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def artifact_entry(art: Artifact, out_dir: Path) -> dict[str, Any]:
    """The manifest record of one artifact; `path` is relative to the out dir."""
    entry: dict[str, Any] = {
        "target": art.target,
        "precision": art.precision,
        "runtime": art.runtime,
        "runtime_version": art.runtime_version,
    }
    if art.path is not None and art.path.exists():
        entry.update(
            path=art.path.relative_to(out_dir).as_posix(), sha256=sha256(art.path), bytes=art.path.stat().st_size
        )
    else:
        entry.update(path=None, sha256=None, bytes=None)
    entry.update(
        inputs=art.inputs,
        outputs=art.outputs,
        details=art.details,
        metrics=art.metrics,
        gate=art.gate,
        passes=[r.stable_json() for r in art.history],
    )
    return entry


def json_safe(value: Any) -> Any:
    """`value` with NaN/±Infinity floats as null: strict JSON that every parser reads (the gate says why)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json_atomic(path: Path, payload: Any) -> None:
    """Strict JSON to a sibling temp file, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(json_safe(payload), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)
