"""deployc: a deployment compiler for trained PyTorch models. This package is the driver; it names no pass and
no target. Its sub-packages, lowest first (each may import only those below it; tests/architecture checks it):

    errors      exit-code errors                 storage     the I/O boundary and the out dir
    core        config, state, versions, timing  data        samples, input contract, metrics, reference
    compiler    contracts, registry, manager     validation  gates, remedies, preflight
    outputs     manifest and reports             driver      one build end to end; the no-op rebuild check
    cli         the command line

Python API: `deployc.build(config_or_path, out=...) -> BuildResult`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from deployc.driver.build import BuildResult


def build(config_or_path: Any, out: Any = None, **kwargs: Any) -> BuildResult:
    """Build and validate every artifact a config (path, dict or BuildConfig) describes."""
    from deployc.driver.build import build as _build

    return _build(config_or_path, out=out, **kwargs)
