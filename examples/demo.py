"""`deployc demo`: build examples/demo.yaml (train the digits CNN once, export fp32 + int8, validate)."""

from __future__ import annotations

from pathlib import Path

import deployc
from deployc.driver.result import BuildResult

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")


def run_demo(out: str | Path = "deployc-demo", quiet: bool = False, cache: bool = True) -> BuildResult:
    """The demo build; an out dir that already holds it is reported up to date (deployc.build, like the CLI)."""
    return deployc.build(DEMO_CONFIG, out=out, quiet=quiet, cache=cache)
