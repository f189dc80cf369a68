"""GitHub Actions job summary: append report.md to the file $GITHUB_STEP_SUMMARY names, when set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from deployc.errors import UsageError


def check_step_summary(environ: Mapping[str, str] | None = None) -> None:
    """Before a build: $GITHUB_STEP_SUMMARY, when set, must name a file deployc can append to (exit 2, not later)."""
    target = (os.environ if environ is None else environ).get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    path = Path(target)
    if path.is_dir():
        raise UsageError(f"GITHUB_STEP_SUMMARY: '{path}' is a folder, not a file to append the job summary to")
    if not (path.parent.is_dir() and os.access(path if path.exists() else path.parent, os.W_OK)):
        raise UsageError(f"GITHUB_STEP_SUMMARY: cannot append to '{path}' (missing folder or not writable)")


def append_step_summary(report_md: str | Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """Append the report (a path to report.md, or its text) to $GITHUB_STEP_SUMMARY; None when unset.

    Appends, never overwrites: other steps of the same job write to the same file.
    """
    target = (os.environ if environ is None else environ).get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    text = Path(report_md).read_text(encoding="utf-8") if isinstance(report_md, Path) else str(report_md)
    path = Path(target)
    try:
        with path.open("a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        raise UsageError(f"GITHUB_STEP_SUMMARY: cannot append to '{path}' ({exc.strerror})") from None
    return path
