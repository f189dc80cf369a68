"""The one place deployc reads and writes files: digests and atomic writes, knowing nothing of manifests or builds."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with NaN/±Infinity floats as null: strict JSON that every parser reads (the gate says why)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_text_atomic(path: Path, text: str) -> Path:
    """Write to a sibling temp file and rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json_atomic(path: Path, payload: Any) -> None:
    """Strict JSON (see json_safe), written atomically."""
    text = json.dumps(json_safe(payload), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"
    write_text_atomic(path, text)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
