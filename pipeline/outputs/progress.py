"""progress.json in the staging folder: every artifact finished so far (gate, metrics, file and hash), rewritten as
each one is, so a build killed before it publishes (SIGKILL, the kernel's OOM killer acting for another process)
leaves a record of what it had built and validated beside those files. Publishing leaves it out (the manifest
supersedes it); the next build into the same out dir removes the killed build's staging folder, as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployc.compiler.contracts import Artifact
from deployc.outputs.manifest import artifact_entry
from deployc.storage.files import write_json_atomic
from deployc.storage.outdir import PROGRESS

FILE_KEYS = ("path", "sha256", "bytes")
KEPT = ("target", "precision", "gate", "metrics", *FILE_KEYS)


def progress_entry(artifact: Artifact, staging: Path) -> dict[str, Any]:
    """One finished artifact's manifest record (outputs/manifest.py: its file hashed once, when it is finished), cut
    to what a killed build's reader needs; no file keys for an artifact without a file."""
    entry = artifact_entry(artifact, staging)
    return {k: entry[k] for k in KEPT if entry[k] is not None or k not in FILE_KEYS}


def write_progress(staging: Path, entries: list[dict[str, Any]]) -> None:
    """Record the artifacts finished so far (progress_entry of each, gates final) in the staging folder, atomically."""
    payload = {
        "complete": False,  # the build had not published: manifest.json in the out dir, if any, is an older build's
        "artifacts": entries,
    }
    write_json_atomic(staging / PROGRESS, payload)
