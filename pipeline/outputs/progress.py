"""progress.json in the staging folder: every artifact finished so far (gate, metrics, file and hash), rewritten as
each one is, so a build killed before it publishes (SIGKILL, the kernel's OOM killer acting for another process)
leaves a record of what it had built and validated beside those files. Publishing leaves it out (the manifest
supersedes it); the next build into the same out dir removes the killed build's staging folder, as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployc.compiler.contracts import Artifact
from deployc.storage.files import file_digest, write_json_atomic
from deployc.storage.outdir import PROGRESS


def progress_entry(artifact: Artifact, staging: Path) -> dict[str, Any]:
    """One finished artifact's record (its file hashed once, when it is finished)."""
    entry: dict[str, Any] = {
        "target": artifact.target,
        "precision": artifact.precision,
        "gate": artifact.gate,
        "metrics": artifact.metrics,
    }
    path = artifact.path
    if path is not None and path.is_file() and path.is_relative_to(staging):
        entry.update(path=path.relative_to(staging).as_posix(), sha256=file_digest(path), bytes=path.stat().st_size)
    return entry


def write_progress(staging: Path, entries: list[dict[str, Any]]) -> None:
    """Record the artifacts finished so far (progress_entry of each, gates final) in the staging folder, atomically."""
    payload = {
        "complete": False,  # the build had not published: manifest.json in the out dir, if any, is an older build's
        "artifacts": entries,
    }
    write_json_atomic(staging / PROGRESS, payload)
