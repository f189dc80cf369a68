"""GitHub Actions job summary: append report.md to the file $GITHUB_STEP_SUMMARY names, when set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def append_step_summary(report_md: str | Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """Append the report (a path to report.md, or its text) to $GITHUB_STEP_SUMMARY; None when unset.

    Appends, never overwrites: other steps of the same job write to the same file.
    """
    target = (os.environ if environ is None else environ).get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    text = Path(report_md).read_text(encoding="utf-8") if isinstance(report_md, Path) else str(report_md)
    path = Path(target)
    with path.open("a", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    return path
