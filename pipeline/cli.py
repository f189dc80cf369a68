"""The `deployc` command line. Exit codes: 0 built and gates passed, 2 bad usage/config/input,
3 built but a validation gate failed, 1 internal error."""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from pathlib import Path
from typing import Any

from deployc import __version__
from deployc.errors import DeploycError, UsageError


def _summary(result: Any) -> dict[str, Any]:
    from deployc.outputs.report import report_view

    m = report_view(result.manifest, result.timings)
    return {
        "status": m["status"],
        "exit_code": result.exit_code,
        "out_dir": str(result.out_dir),
        "pipeline": m["pipeline"],
        "reference": m["reference"],
        "seconds": m["timings"]["total_seconds"],
        "artifacts": [
            {k: a[k] for k in ("target", "precision", "path", "bytes", "sha256", "metrics", "gate", "perf")}
            for a in m["artifacts"]
        ],
    }


def print_table(result: Any, stream: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from deployc.outputs.report import artifact_header, artifact_rows, report_view

    manifest = report_view(result.manifest, result.timings)
    table = Table(title=f"deployc: {manifest['name']} ({manifest['status']})")
    for col in artifact_header(manifest["reference"]["metric"]):
        table.add_column(col, justify="left" if col in ("target", "precision", "gate") else "right")
    for row in artifact_rows(manifest):
        table.add_row(*row)
    Console(file=stream or sys.stdout, width=140).print(table)


def finish_build(result: Any, args: argparse.Namespace, wrote: bool = True) -> int:
    """Print the summary (JSON on stdout, or the table), append report.md to a GitHub job summary."""
    from deployc.outputs.ci_summary import append_step_summary

    try:
        append_step_summary(result.out_dir / "report.md")
    except UsageError as exc:  # the build is done and published; a job summary that cannot be written is a warning
        print(f"deployc: warning: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(dict(_summary(result), up_to_date=not wrote), indent=2))
    elif not args.quiet:
        print_table(result)
        done = "wrote" if wrote else "up to date (nothing it depends on changed; --no-cache rebuilds):"
        print(f"{done} {result.out_dir}/manifest.json, report.md, report.html and junit.xml", file=sys.stderr)
    return result.exit_code


def _cmd_build(args: argparse.Namespace) -> int:
    from deployc.driver.uptodate import up_to_date  # light: hashes the inputs before torch & co. are imported

    fresh = None if args.no_cache else up_to_date(args.config, args.out, args.target)
    if fresh is not None:
        return finish_build(fresh, args, wrote=False)
    from deployc.driver.build import build
    from deployc.outputs.ci_summary import check_step_summary

    check_step_summary()
    result = build(
        args.config,
        out=args.out,
        targets=args.target,
        quiet=args.quiet or args.json,
        cache=not args.no_cache,
        force=args.force,
        debug=args.debug,
    )
    return finish_build(result, args)


def _cmd_validate_config(args: argparse.Namespace) -> int:
    from deployc.core.quiet import ThirdPartyOutput
    from deployc.driver.build import check
    from deployc.validation.preflight import preflight

    _, manager = check(args.config)
    with ThirdPartyOutput(enabled=not args.debug):
        preflight(args.config)
    if args.json:
        print(json.dumps({"valid": True, "pipeline": manager.pipeline_string()}))
    elif not args.quiet:
        print(f"{args.config}: ok\npipeline: {manager.pipeline_string()}")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from deployc.compiler.pass_cache import DEFAULT_MAX_BYTES, PassCache

    cache = PassCache()
    limit = DEFAULT_MAX_BYTES if args.max_size is None else _parse_size(args.max_size)
    result = cache.prune(limit) if args.action == "prune" else cache.info()
    if args.action == "prune":
        result = {**cache.info(), "removed": result["removed"]}
    if args.json:
        print(json.dumps(result))
    elif not args.quiet:
        from deployc.outputs.report import human_bytes

        print(
            f"{result['path']}: {result['entries']} entries, {human_bytes(result['bytes'])}"
            + (f" ({result['removed']} removed)" if "removed" in result else "")
        )
    return 0


def _parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}
    units |= {"T": 1024**4, "TB": 1024**4}
    num = text.strip().rstrip("BKMGTbkmgt")
    unit = text.strip()[len(num) :].upper()
    try:
        value = float(num) * units[unit]
    except (ValueError, KeyError):
        raise UsageError(f"--max-size: '{text}' is not a size like 500MB or 2G") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"--max-size: '{text}' must be a finite size of 0 or more, like 500MB or 2G")
    return int(value)


def count(maximum: int, minimum: int = 1) -> Any:
    """An argparse type for a numeric option: a whole number in minimum..maximum, else exit 2 naming the option
    (argparse's own 'argument --runs: ...' error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number ({minimum}..{maximum})") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{value} is outside {minimum}..{maximum}")
        return value

    return parse


def in_range(option: str, value: Any, minimum: float, maximum: float) -> None:
    """The Python API's check of a numeric option (the CLI's `count` does it while parsing): exit 2 naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not minimum <= value <= maximum:
        raise UsageError(f"{option}: {value!r} is outside {minimum:g}..{maximum:g}")


BUILTIN_COMMANDS = ("build", "cache", "validate-config")


def _plugin_commands(argv: list[str] | None) -> dict[str, Any]:
    """Only the command plugin the command line names (importing one can cost numpy and more); all of them
    when it names none (--help, a typo) so the usage lists every command."""
    word = next((a for a in argv or [] if not a.startswith("-")), None)
    if word in BUILTIN_COMMANDS or (word is None and "--version" in (argv or [])):
        return {}
    from deployc.compiler.registry import COMMANDS, commands, get, names

    return {word: get(COMMANDS, word)} if word in names(COMMANDS) else commands()


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    common.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    common.add_argument("--debug", action="store_true", help="show Python tracebacks")
    common.add_argument("--no-cache", action="store_true", help="run every pass; neither read nor write the pass cache")
    p = argparse.ArgumentParser(
        prog="deployc",
        description="Compile a trained PyTorch model into validated deployment artifacts.",
        epilog="exit codes: 0 built and every gate passed; 2 bad usage, config or input (nothing built); "
        "3 built but a validation gate failed; 1 internal error",
    )
    p.add_argument("--version", action="version", version=f"deployc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", parents=[common], help="build and validate the artifacts a config describes")
    b.add_argument("config", type=Path)
    b.add_argument("--out", type=Path, help="output folder (default: deployc-out/<name>)")
    b.add_argument("--target", action="append", help="build only this target (repeatable)")
    b.add_argument(
        "--force",
        action="store_true",
        help="build into a folder that holds files deployc did not write (they are never replaced or removed)",
    )
    b.set_defaults(func=_cmd_build)
    c = sub.add_parser("cache", parents=[common], help="show or prune the pass cache ($DEPLOYC_CACHE_DIR/passes)")
    c.add_argument("action", choices=["info", "prune"])
    c.add_argument(
        "--max-size",
        help="prune: keep the most recently used entries up to this size (default 1GB, the size every build keeps)",
    )
    c.set_defaults(func=_cmd_cache)
    for add_parser in _plugin_commands(argv).values():  # bench, explain, demo and any plugin's commands
        add_parser(sub, parents=[common])
    v = sub.add_parser("validate-config", parents=[common], help="check a config and its pipeline without building")
    v.add_argument("config", type=Path)
    v.set_defaults(func=_cmd_validate_config)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser(argv)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except DeploycError as exc:
        if args.debug:
            traceback.print_exc()
        kind = "internal error" if exc.exit_code == 1 else "error"  # exit 1: a bug in deployc or a library
        hint = " (run with --debug for the traceback)" if exc.exit_code == 1 and not args.debug else ""
        print(f"deployc: {kind}: {exc}{hint}", file=sys.stderr)
        if exc.exit_code == 1:
            _print_notes(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("deployc: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: a bug in deployc or a library, not the user's input
        if args.debug:
            traceback.print_exc()
        print(
            f"deployc: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        _print_notes(exc)
        return 1


def _print_notes(exc: BaseException) -> None:
    """What deployc.core.quiet captured from third-party libraries before an internal error."""
    for note in getattr(exc, "__notes__", []):
        print(note, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
