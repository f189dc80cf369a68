"""What a build gives back, whether it ran or found its out dir up to date (light: no torch, onnx or numpy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployc.compiler.contracts import Artifact


@dataclass
class BuildResult:
    """exit_code: 0 built (or up to date) and every gate passed, 3 a gate failed — the CLI's exit code. An up-to-date
    result ran nothing: `artifacts` is empty and the manifest (read from the out dir) lists them."""

    out_dir: Path
    manifest: dict[str, Any]  # what manifest.json holds (deterministic)
    artifacts: list[Artifact] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)  # what timings.json holds (wall times, latency)
    up_to_date: bool = False  # the out dir already held this exact build; nothing ran, nothing was written

    @property
    def exit_code(self) -> int:
        return 3 if self.manifest.get("status") == "failed" else 0
