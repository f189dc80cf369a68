"""The `deployc` command line. Exit codes: 0 built and gates passed, 2 bad usage/config/input,
3 built but a validation gate failed, 1 internal error."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.errors import DeploycError


def _summary(result: Any) -> dict[str, Any]:
    m = result.manifest
    return {"status": m["status"], "exit_code": result.exit_code, "out_dir": str(result.out_dir),
            "pipeline": m["pipeline"], "reference": m["reference"],
            "artifacts": [{k: a[k] for k in ("target", "precision", "path", "bytes", "sha256", "metrics", "gate", "perf")}
                          for a in m["artifacts"]]}


def print_table(manifest: dict[str, Any], stream: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from pipeline.report import artifact_rows

    table = Table(title=f"deployc: {manifest['name']} ({manifest['status']})")
    for col in ("target", "precision", "size", manifest["reference"]["metric"], "drift", "ms/sample", "gate"):
        table.add_column(col, justify="left" if col in ("target", "precision", "gate") else "right")
    for row in artifact_rows(manifest):
        table.add_row(*row)
    Console(file=stream or sys.stdout, width=110).print(table)


def _cmd_build(args: argparse.Namespace) -> int:
    from pipeline.build import build

    result = build(args.config, out=args.out, targets=args.target, quiet=args.quiet or args.json)
    if args.json:
        print(json.dumps(_summary(result), indent=2))
    elif not args.quiet:
        print_table(result.manifest)
        print(f"wrote {result.out_dir}/manifest.json and report.md", file=sys.stderr)
    return result.exit_code


def _cmd_demo(args: argparse.Namespace) -> int:
    from examples.demo import run_demo

    result = run_demo(out=args.out, quiet=args.quiet or args.json)
    if args.json:
        print(json.dumps(_summary(result), indent=2))
    else:
        print_table(result.manifest)
        print(f"wrote {result.out_dir}/manifest.json and report.md", file=sys.stderr)
    return result.exit_code


def _cmd_validate_config(args: argparse.Namespace) -> int:
    from pipeline.build import check

    _, manager = check(args.config)
    if args.json:
        print(json.dumps({"valid": True, "pipeline": manager.pipeline_string()}))
    elif not args.quiet:
        print(f"{args.config}: ok\npipeline: {manager.pipeline_string()}")
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    common.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    common.add_argument("--debug", action="store_true", help="show Python tracebacks")
    p = argparse.ArgumentParser(prog="deployc", description="Compile a trained PyTorch model into validated deployment artifacts.",
                                epilog="exit codes: 0 built and every gate passed; 2 bad usage, config or input (nothing built); "
                                       "3 built but a validation gate failed; 1 internal error")
    p.add_argument("--version", action="version", version=f"deployc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", parents=[common], help="build and validate the artifacts a config describes")
    b.add_argument("config", type=Path)
    b.add_argument("--out", type=Path, help="output folder (default: deployc-out/<name>)")
    b.add_argument("--target", action="append", help="build only this target (repeatable)")
    b.set_defaults(func=_cmd_build)
    d = sub.add_parser("demo", parents=[common], help="train (once, cached) a small CNN on digits and build it")
    d.add_argument("--out", type=Path, default=Path("deployc-demo"))
    d.set_defaults(func=_cmd_demo)
    v = sub.add_parser("validate-config", parents=[common], help="check a config and its pipeline without building")
    v.add_argument("config", type=Path)
    v.set_defaults(func=_cmd_validate_config)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except DeploycError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"deployc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("deployc: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: a bug in deployc or a library, not the user's input
        if args.debug:
            traceback.print_exc()
        print(f"deployc: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
