"""`deployc demo`: train the digits CNN once (cached), build it to onnx fp32 + int8 and validate both."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from deployc.cli import finish_build


def _cmd_demo(args: argparse.Namespace) -> int:
    from deployc.examples.demo import run_demo

    result = run_demo(out=args.out, quiet=args.quiet or args.json, cache=not args.no_cache)
    return finish_build(result, args)


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo", parents=parents or [], help="train (once, cached) a small CNN on digits and build it"
    )
    p.add_argument("--out", type=Path, default=Path("deployc-demo"))
    p.set_defaults(func=_cmd_demo)
    return p
