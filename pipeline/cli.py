"""The `deployc` command line. Exit codes: 0 built and gates passed, 2 bad usage/config/input,
3 built but a validation gate failed, 1 internal error."""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deployc import __version__
from deployc.errors import DeploycError, UsageError


def _summary(result: Any) -> dict[str, Any]:
    from deployc.outputs.report import report_view

    m = report_view(result.manifest, result.timings)
    return {
        "error": None,
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


def finish_build(result: Any, args: argparse.Namespace, wrote: bool | None = None) -> int:
    """Print the summary (JSON on stdout, or the table), append report.md to a GitHub job summary."""
    wrote = not getattr(result, "up_to_date", False) if wrote is None else wrote
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
    from deployc.driver.oneline import oneline_config, oneline_out, wants_oneline
    from deployc.driver.uptodate import check_config_replaceable

    if wants_oneline(args):
        if args.config is not None:
            raise UsageError(f"give a CONFIG ('{args.config}') or the one-line flags (--model, --data ...), not both")
        args.out = oneline_out(args)
        check_config_replaceable(args.out)
        with _folder_for_paths(args.out):
            written = oneline_config(args, args.argv, args.out)
            return _build(args, written.config, None, written.text)
    elif args.config is None:
        raise UsageError("give a CONFIG file, or --model and --data for the one-line start (deployc build --help)")
    targets = args.target
    if any(":" in t for t in targets or []):
        raise UsageError(
            f"--target: '{next(t for t in targets if ':' in t)}': with a CONFIG, --target names a target "
            "(the config gives its precisions); NAME:PRECISION is for the one-line start"
        )
    return _build(args, args.config, targets, None)


def _build(args: argparse.Namespace, source: Any, targets: list[str] | None, text: str | None) -> int:
    import deployc
    from deployc.outputs.ci_summary import check_step_summary

    result = deployc.build_unless_fresh(
        source,
        out=args.out,
        targets=targets,
        quiet=args.quiet or args.json,
        cache=not args.no_cache,
        force=args.force,
        debug=args.debug,
        config_text=text,
        before_build=check_step_summary,
    )
    return finish_build(result, args)


@contextmanager
def _folder_for_paths(out: Path) -> Iterator[None]:
    """The one-line config's paths are relative to OUT ('../net.py:make'), which the OS resolves only when OUT
    exists: it is made first, and removed again when the build leaves it empty (a failed first build)."""
    made = not out.exists()
    if made:
        try:
            out.mkdir(parents=True)
        except OSError as exc:
            raise UsageError(f"--out: cannot create '{out}': {exc.strerror}") from None
    try:
        yield
    finally:
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _cmd_validate_config(args: argparse.Namespace) -> int:
    from deployc.core.quiet import ThirdPartyOutput
    from deployc.driver.build import check
    from deployc.validation.preflight import preflight

    other = _other_kind(args.config)
    if other is not None:
        if args.json:
            print(json.dumps({"valid": True, "error": None, **other}))
        elif not args.quiet:
            shown = "\n".join(f"pipeline: {p}" for p in other.get("pipelines", []))
            print(
                f"{args.config}: ok ({other['kind']} file: {other.get('variants', '?')} variants, each checked)\n{shown}"
            )
        return 0
    _, manager = check(args.config)
    with ThirdPartyOutput(enabled=not args.debug):
        preflight(args.config)
    if args.json:
        print(json.dumps({"valid": True, "error": None, "kind": "build", "pipeline": manager.pipeline_string()}))
    elif not args.quiet:
        print(f"{args.config}: ok\npipeline: {manager.pipeline_string()}")
    return 0


def _other_kind(path: Path) -> dict[str, Any] | None:
    """The summary of a file another plugin checks (a sweep file), or None for a build config (or an unreadable
    file: the build config's checks report it)."""
    from deployc.compiler.registry import config_checks
    from deployc.core.config import parse_yaml

    try:
        data = parse_yaml(path)
    except UsageError:
        return None
    for check in config_checks():
        summary = check(path, data)
        if summary is not None:
            return summary
    return None


def _cmd_cache(args: argparse.Namespace) -> int:
    from deployc.compiler.pass_cache import DEFAULT_MAX_BYTES, PassCache
    from deployc.outputs.report import human_bytes

    cache = PassCache()
    before = cache.info()
    result = dict(before, error=None)
    if args.action == "prune":
        limit = DEFAULT_MAX_BYTES if args.max_size is None else _parse_size(args.max_size)
        removed = cache.prune(limit)["removed"]
        result = dict(cache.info(), error=None, removed=removed, limit=limit)
        result["freed"] = max(0, before["bytes"] - result["bytes"])
    if args.json:
        print(json.dumps(result))
    elif not args.quiet:
        holds = f"{result['path']}: {result['entries']} entries, {human_bytes(result['bytes'])}"
        if args.action == "info":
            print(holds)
        elif result["removed"]:
            print(
                f"pruned {result['removed']} least recently used entries ({human_bytes(result['freed'])}) to stay "
                f"within --max-size {human_bytes(result['limit'])}; {holds}"
            )
        else:
            print(f"nothing to prune: {holds}, within --max-size {human_bytes(result['limit'])}")
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


class BadUsage(UsageError):
    """A command line argparse rejects; carries the usage line of the (sub)command."""

    def __init__(self, message: str, usage: str):
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() reports bad usage like any error (--json included)."""

    def error(self, message: str) -> Any:
        raise BadUsage(message, self.format_usage())


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from deployc.driver.oneline import add_flags

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    common.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    common.add_argument("--debug", action="store_true", help="show Python tracebacks")
    common.add_argument("--no-cache", action="store_true", help="run every pass; neither read nor write the pass cache")
    p = _Parser(
        prog="deployc",
        description="Compile a trained PyTorch model into validated deployment artifacts.",
        epilog="exit codes: 0 built and every gate passed; 2 bad usage, config or input (nothing built); "
        "3 built but a validation gate failed; 1 internal error",
    )
    p.add_argument("--version", action="version", version=f"deployc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build",
        parents=[common],
        help="build and validate the artifacts a config (or the one-line flags) describes",
        description="deployc build CONFIG [--out DIR], or the one-line start: deployc build --model FILE.py:fn "
        "[--weights W] [--input NAME:SHAPE] --data DATA [--target onnx:int8 ...] --out DIR (writes DIR/deployc.yaml: "
        "`deployc build DIR/deployc.yaml` is the same build). An out dir that already holds this exact build is "
        "left as it is ('up to date'); a rebuild says which input changed.",
    )
    b.add_argument("config", type=Path, nargs="?", help="a build config (YAML); omit it for the one-line start")
    b.add_argument(
        "--out", type=Path, help="output folder (default: deployc-out/<name>; for CONFIG=DIR/deployc.yaml, DIR)"
    )
    add_flags(b)
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
    as_json, debug = "--json" in argv, "--debug" in argv  # known before parsing: a usage error answers in JSON too
    try:
        args = parser(argv).parse_args(argv)
        args.argv = list(argv)
        as_json, debug = args.json, args.debug
        return args.func(args)
    except BadUsage as exc:
        if not as_json:
            print(exc.usage, end="", file=sys.stderr)
        return _failed(exc, 2, "error", as_json)
    except DeploycError as exc:
        if debug:
            traceback.print_exc()
        kind = "internal error" if exc.exit_code == 1 else "error"  # exit 1: a bug in deployc or a library
        hint = " (run with --debug for the traceback)" if exc.exit_code == 1 and not debug else ""
        return _failed(exc, exc.exit_code, kind, as_json, hint)
    except KeyboardInterrupt:
        return _failed("interrupted", 130, None, as_json)
    except Exception as exc:  # an internal error: a bug in deployc or a library, not the user's input
        if debug:
            traceback.print_exc()
        return _failed(exc, 1, "internal error", as_json, " (run with --debug for the traceback)")


def _failed(exc: BaseException | str, code: int, kind: str | None, as_json: bool, hint: str = "") -> int:
    """Report a command that stopped: one line on stderr (with what third-party libraries printed before an internal
    error) and, with --json, one JSON object on stdout: {"error", "exit_code", ...}."""
    text = str(exc) if isinstance(exc, (str, DeploycError)) else f"{type(exc).__name__}: {exc}"
    print(f"deployc: {kind}: {text}{hint}" if kind else f"deployc: {text}", file=sys.stderr)
    if code == 1 and not isinstance(exc, str):
        _print_notes(exc)
    if as_json:
        print(json.dumps({"error": text, "exit_code": code, "status": "error"}))
    return code


def _print_notes(exc: BaseException) -> None:
    """What deployc.core.quiet captured from third-party libraries before an internal error."""
    for note in getattr(exc, "__notes__", []):
        print(note, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
