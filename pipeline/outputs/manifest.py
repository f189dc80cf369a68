"""manifest.json: every artifact with its hash, size, I/O specs, runtime, metrics and gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployc.compiler.contracts import Artifact
from deployc.storage.files import file_digest as sha256  # one file hash for manifests and no-op rebuild checks

MANIFEST_VERSION = 1


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
