"""deployc: a deployment compiler for trained PyTorch models. This package is the driver; it names no pass and
no target. Its sub-packages, lowest first (each may import only those below it; tests/architecture checks it):

    errors      exit-code errors                 storage     the I/O boundary and the out dir
    core        config, state, versions, timing  data        samples, input contract, metrics, reference
    compiler    contracts, registry, manager     validation  gates, remedies, preflight
    outputs     manifest and reports             driver      one build end to end; the no-op rebuild check
    cli         the command line

Python API: `deployc.build(config, out=..., targets=..., cache=..., force=...) -> BuildResult`, with the
command line's behaviour: an out dir that already holds this exact build is returned as it is (up_to_date=True,
nothing runs), a rebuild says why, and result.exit_code is `deployc build`'s exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from deployc.core.config import BuildConfig
    from deployc.driver.result import BuildResult


def build(
    config: str | Path | dict | BuildConfig,
    *,
    out: str | Path | None = None,
    targets: list[str] | None = None,
    quiet: bool = False,
    cache: bool = True,
    force: bool = False,
    debug: bool = False,
) -> BuildResult:
    """Build and validate every artifact a config (a YAML path, a dict or a BuildConfig) describes, like
    `deployc build`. Raises a DeploycError (exit_code 2: bad config, model or data; 1: internal error).

    out: the output folder (default deployc-out/<name>). targets: build only these targets (--target).
    quiet: print nothing (--quiet). cache: False runs every pass even when the out dir is up to date and
    bypasses the pass cache (--no-cache). force: build into a folder holding files deployc did not write;
    they are never replaced or removed (--force). debug: let third-party libraries print (--debug).
    """
    return build_unless_fresh(config, out=out, targets=targets, quiet=quiet, cache=cache, force=force, debug=debug)


def build_unless_fresh(
    config: str | Path | dict | BuildConfig,
    *,
    out: str | Path | None = None,
    targets: list[str] | None = None,
    quiet: bool = False,
    cache: bool = True,
    force: bool = False,
    debug: bool = False,
    config_text: str | None = None,
    before_build: Callable[[], None] | None = None,
) -> BuildResult:
    """build() for the CLI too: config_text is saved as OUT/deployc.yaml (the one-line start); before_build runs
    only when a build will run (the CLI checks $GITHUB_STEP_SUMMARY there)."""
    from deployc.driver.uptodate import check_fresh  # light: hashes the inputs before torch & co. are imported

    fresh = check_fresh(config, Path(out) if out is not None else None, targets, rebuild=not cache)
    if fresh.result is not None:
        return fresh.result
    if not quiet and fresh.out_dir is not None:
        why = f"building {fresh.out_dir} again: {fresh.reason}" if fresh.reason else f"building into {fresh.out_dir}"
        print(f"deployc: {why}", file=sys.stderr, flush=True)
    if before_build is not None:
        before_build()
    from deployc.driver.build import build as run

    return run(
        config, out=out, targets=targets, quiet=quiet, cache=cache, force=force, debug=debug, config_text=config_text
    )
