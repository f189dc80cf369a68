"""deployc: the compiler driver (config, pass manager, manifest, report, CLI).

Python API: `deployc.build(config_or_path, out=...) -> BuildResult`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from deployc.build import BuildResult


def build(config_or_path: Any, out: Any = None, **kwargs: Any) -> BuildResult:
    """Build and validate every artifact a config (path, dict or BuildConfig) describes."""
    from deployc.build import build as _build

    return _build(config_or_path, out=out, **kwargs)
