"""`deployc bench CONFIG|BUILD_DIR`: every artifact of a build side by side with the baselines people would
otherwise ship (see bench_baselines.py), in one process. Each candidate is opened and scored on the validation
set (metric, peak memory); then all of them are timed together in interleaved rounds after warm-up (batch-1
latency, then throughput at a larger batch), so load on a shared machine hits every candidate alike. Rows
give medians with their spread (IQR); ratios to torch eager are taken within each round; a row whose spread
is large is marked unstable, and the table states the load average before and after.

A BUILD_DIR is data (commands/build_dir.py): its manifest is checked, its artifacts must be regular files inside it
with the hashes it records, and the model, data and metric come from its stored config only when that names no
Python code; otherwise from the config the user names with --config. bench.json, bench.md and report.html (the
build's report with the bench table) are written through the I/O boundary into BENCH_DIR/ of the build folder (or
of --out): a subfolder the out dir's marker lists, so the build itself stays up to date and no user file is
replaced."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from deployc.cli import count, in_range
from deployc.errors import UsageError

BENCH_DIR = "bench"
MAX_BATCH = 65_536
MAX_RUNS = 1_000_000


class PeakRss:
    """Samples this process's resident memory in a thread; .peak_mb is the rise above the start."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.start, self.peak = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.start = self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def _failed(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


def open_and_score(cand: Any, data: Any, reference: Any, big: dict, eval_batch: int) -> tuple[Any, dict[str, Any]]:
    """Open a candidate, score it on the validation set and run one large batch; (runner or None, row)."""
    from deployc.data.reference import compare, run_batched

    row: dict[str, Any] = {"name": cand.name, "kind": cand.kind, "bytes": cand.bytes, **cand.extra}
    if cand.skipped:
        return None, {**row, "skipped": cand.skipped}
    try:
        with PeakRss() as mem:
            run = cand.open()
            scores = compare(run_batched(run, data, eval_batch), reference)
            run(big)
    except Exception as exc:
        cand.close()
        return None, {**row, "skipped": _failed(exc)}
    row.update({k: v for k, v in scores.items() if k in ("metric", "drift", "agreement", "cosine")})
    row["peak_mb"] = mem.peak_mb
    return run, row


def time_rows(
    runners: dict[str, Any], rows: list[dict[str, Any]], one: dict, big: dict, runs: int, min_seconds: float
) -> dict[str, Any]:
    """Batch-1 latency and throughput of every open runner, in interleaved rounds; fills the rows."""
    from deployc.commands.bench_baselines import EAGER, QSTATIC  # numpy & co.: not when the CLI only lists commands
    from deployc.core.timing import interleaved

    rounds = max(5, min(20, runs // 5))
    latency = interleaved({k: (lambda r=r: r(one)) for k, r in runners.items()}, rounds, -(-runs // rounds))
    t_big = max(latency.times[k].median for k in runners) * len(next(iter(big.values()))) / 1000
    per_round = max(1, round(min_seconds / max(t_big, 1e-6) / rounds))  # ~min_seconds of big batches per candidate
    heavy = interleaved({k: (lambda r=r: r(big)) for k, r in runners.items()}, rounds, per_round, warmup=1)
    batch = len(next(iter(big.values())))
    base = {EAGER, QSTATIC} & set(runners)
    for row in rows:
        name = row["name"]
        if name not in runners:
            continue
        t = latency.times[name]
        row.update(
            p50_ms=t.median,
            iqr_ms=t.iqr,
            p90_ms=latency.percentile(name, 90),
            p99_ms=latency.percentile(name, 99),
            throughput=batch / heavy.times[name].median * 1000,
            unstable=latency.unstable(name, EAGER if EAGER in base else None) or heavy.times[name].unstable,
        )
        if EAGER in base:
            row["x_eager_p50"] = latency.ratio(name, EAGER).median
            row["x_eager_throughput"] = 1 / heavy.ratio(name, EAGER).median
        if QSTATIC in base:
            row["x_qstatic_p50"] = latency.ratio(name, QSTATIC).median
    return {"latency": latency.to_json(EAGER if EAGER in base else None), "throughput": heavy.to_json()}


def add_size_ratios(rows: list[dict[str, Any]]) -> None:
    """Size relative to torch eager's state_dict (latency and throughput ratios come from the rounds)."""
    from deployc.commands.bench_baselines import EAGER  # numpy & co.: not when the CLI only lists commands

    eager = next((r for r in rows if r["name"] == EAGER and r.get("bytes")), None)
    for r in rows:
        if eager and r.get("bytes") and "skipped" not in r:
            r["x_eager_size"] = r["bytes"] / eager["bytes"]


def bench_table(result: dict[str, Any]) -> dict[str, Any]:
    """The bench as a {title, header, rows} table (report.md / report.html render these)."""
    from deployc.outputs.report import human_bytes

    def f(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r[key], fmt) if r.get(key) is not None else "—"

    header = ["candidate", "size", result["metric"], "drift", "p50 ms", "IQR ms", "p90 ms", "p99 ms"]
    header += [f"samples/s @{result['batch']}", "peak MB", "×eager p50", "×eager samples/s", "×eager size"]
    header += ["×qstatic p50", "stable"]
    rows = []
    for r in result["rows"]:
        if r.get("skipped"):
            rows.append([r["name"], human_bytes(r.get("bytes")), f"skipped: {r['skipped']}"] + ["—"] * 12)
            continue
        drift = f"{r['drift'] * 100:+.2f}%" if r.get("drift") is not None else "—"
        rows.append(
            [r["name"], human_bytes(r.get("bytes")), f(r, "metric", ".4f"), drift]
            + [f(r, k, ".3f") for k in ("p50_ms", "iqr_ms", "p90_ms", "p99_ms")]
            + [f(r, "throughput", ".1f"), f(r, "peak_mb", ".1f"), f(r, "x_eager_p50", ".3f")]
            + [f(r, "x_eager_throughput", ".2f"), f(r, "x_eager_size", ".3f"), f(r, "x_qstatic_p50", ".3f")]
            + ["unstable" if r.get("unstable") else "yes"]
        )
    load = result["load_average"]
    title = (
        f"Benchmark: {result['model']} — batch-1 latency, {result['runs']} runs per candidate in interleaved "
        f"rounds after warm-up; ratios taken within each round; {result['cpu_count']} CPU cores, load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after; unstable: IQR above 25% of the median"
    )
    return {"title": title, "header": header, "rows": rows}


def _resolve(
    target_path: Path, out: Path | None, config: Path | None, quiet: bool, cache: bool
) -> tuple[dict, Path, Any]:
    """(manifest, build dir, BuildConfig) for a CONFIG (built first) or a BUILD_DIR (read as data)."""
    from deployc.commands.build_dir import checked_artifacts, config_for, read_manifest

    if target_path.is_dir():
        manifest = read_manifest(target_path)
        checked_artifacts(target_path, manifest)
        return manifest, target_path, config_for(target_path, manifest, config, model=True)
    if config is not None:
        raise UsageError(f"--config: goes with a BUILD_DIR; '{target_path}' is itself the config to build and bench")
    from deployc.core.config import load_config
    from deployc.driver.build import build

    result = build(target_path, out=out, quiet=quiet, cache=cache)
    return result.manifest, result.out_dir, load_config(target_path)


def run_bench(
    target_path: str | Path,
    out: str | Path | None = None,
    batch: int = 32,
    runs: int = 100,
    baselines: bool = True,
    config: str | Path | None = None,
    quiet: bool = False,
    min_seconds: float = 1.0,
    cache: bool = True,
) -> dict[str, Any]:
    """Benchmark a build (BUILD_DIR, with `config` naming its config when the stored one names code) or build a
    CONFIG first; writes bench.json, bench.md and report.html into BENCH_DIR/ of `out` (default: the build folder)
    and returns the result dict (rows, ratios, the table)."""
    import numpy as np

    from deployc.commands.bench_baselines import artifact_candidates, baseline_candidates
    from deployc.compiler.instruments import Instruments
    from deployc.compiler.loader import load_model
    from deployc.data.metrics import get_metric
    from deployc.data.reference import compute_reference
    from deployc.data.sources import calibration_source, load_dataset

    in_range("batch", batch, 1, MAX_BATCH)
    in_range("runs", runs, 1, MAX_RUNS)
    in_range("min_seconds", min_seconds, 1e-3, 3600)
    log = Instruments(quiet=quiet).log
    target_path = Path(target_path)
    if not target_path.exists():
        raise UsageError(f"{target_path}: no such config file or build folder")
    dest = Path(out) if out else None
    if target_path.is_dir():
        _check_dest(dest or target_path)  # before any work: a folder deployc may write its bench/ into
    manifest, build_dir, config = _resolve(target_path, dest, Path(config) if config else None, quiet, cache)
    state = load_model(config)
    validation = load_dataset(config.data.validation, config, state.inputs, "validation")
    calib_src = calibration_source(config)
    calibration = load_dataset(calib_src, config, state.inputs, "calibration") if calib_src else None
    reference = compute_reference(state, validation, get_metric(config), config.data.batch_size)
    one = {k: v[:1] for k, v in validation.inputs.items()}
    big = {k: np.concatenate([v] * -(-batch // len(validation)))[:batch] for k, v in validation.inputs.items()}
    with tempfile.TemporaryDirectory(prefix="deployc-bench-") as work:
        cands = []
        if baselines:
            log("bench: building baselines (plain export, quantize_static, litert-torch default)")
            cands += baseline_candidates(state, calibration, config.quantize.samples, Path(work))
        cands += artifact_candidates(manifest, build_dir)
        rows, runners = [], {}
        for cand in cands:
            runner, row = open_and_score(cand, validation, reference, big, config.data.batch_size)
            rows.append(row)
            if runner is not None:
                runners[cand.name] = runner
            log(f"bench: {cand.name}: " + (f"skipped ({row['skipped']})" if "skipped" in row else "opened"))
        try:
            rounds = time_rows(runners, rows, one, big, runs, min_seconds) if runners else {}
        finally:
            for cand in cands:
                if cand.name in runners:
                    cand.close()
    add_size_ratios(rows)
    for row in rows:
        if "p50_ms" in row:
            log(f"bench: {row['name']}: p50 {row['p50_ms']:.3f} ms (IQR {row['iqr_ms']:.3f})")
    lat = rounds.get("latency", {}).get("load_average", [0.0, 0.0])
    result = {
        "model": manifest["name"],
        "build_dir": str(build_dir),
        "metric": reference.metric.name,
        "reference": reference.value,
        "batch": batch,
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "load_average": lat,
        "rounds": rounds,
        "rows": rows,
    }
    result["table"] = bench_table(result)
    _write(result, dest or build_dir, manifest, build_dir)
    return result


def _check_dest(dest: Path) -> None:
    """dest must be a folder deployc may write into, and its BENCH_DIR/ hold only files deployc wrote there."""
    from deployc.storage.outdir import check_out_dir, read_marker

    check_out_dir(dest, subdirs=(BENCH_DIR,))
    folder = dest / BENCH_DIR
    if folder.is_dir():
        owned = set((read_marker(dest) or {"files": []})["files"])
        foreign = sorted(p for p in folder.rglob("*") if not p.is_dir() and p.relative_to(dest).as_posix() not in owned)
        if foreign:
            raise UsageError(f"--out: '{foreign[0]}' was not written by deployc; it is never replaced")


def _write(result: dict[str, Any], dest: Path, manifest: dict[str, Any], build_dir: Path) -> None:
    """bench.json, bench.md and report.html (the build's report with the bench table) into dest/BENCH_DIR/, staged
    and published through the out dir's handle (storage/outdir.py): never through a link, never over a user's file,
    and nothing of the build itself is touched."""
    from deployc.errors import first_line
    from deployc.outputs.report import markdown_table, report_view
    from deployc.outputs.report_html import render_html
    from deployc.storage.files import read_json, write_json_atomic, write_text_atomic
    from deployc.storage.outdir import OutDir

    _check_dest(dest)
    t = result["table"]
    timings_path = build_dir / "timings.json"
    try:
        timings = read_json(timings_path, str(timings_path)) if timings_path.is_file() else {}
        html = render_html(report_view(manifest, timings if isinstance(timings, dict) else {}), [t])
    except (KeyError, TypeError, ValueError, AttributeError, UsageError) as exc:
        raise UsageError(f"{build_dir / 'manifest.json'}: cannot render its report ({first_line(exc)})") from None
    with OutDir(dest) as outdir:
        stage = outdir.staging / BENCH_DIR
        stage.mkdir()
        write_json_atomic(stage / "bench.json", result)
        write_text_atomic(stage / "bench.md", f"## {t['title']}\n\n{markdown_table(t['header'], t['rows'])}\n")
        write_text_atomic(stage / "report.html", html)
        outdir.publish(only=BENCH_DIR)


def _cmd_bench(args: argparse.Namespace) -> int:
    result = run_bench(
        args.target,
        out=args.out,
        batch=args.batch,
        runs=args.runs,
        baselines=not args.no_baselines,
        config=args.config,
        quiet=args.quiet or args.json,
        cache=not getattr(args, "no_cache", False),
    )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2, default=str))
    elif not args.quiet:
        from rich.console import Console
        from rich.table import Table

        t = result["table"]
        table = Table(title=t["title"])
        for i, col in enumerate(t["header"]):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in t["rows"]:
            table.add_row(*[str(c) for c in row])
        Console(file=sys.stdout, width=220).print(table)
    return 0


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    """Register `deployc bench`; `parents` are the CLI's common options (--quiet/--json/--debug/...)."""
    p = subparsers.add_parser(
        "bench",
        parents=parents or [],
        help="benchmark a build's artifacts against eager/ORT/quantize_static/litert baselines",
    )
    p.add_argument("target", type=Path, help="a config file (built first) or a finished build folder")
    p.add_argument(
        "--out",
        type=Path,
        help=f"folder whose {BENCH_DIR}/ gets bench.json, bench.md, report.html (default: the build's)",
    )
    p.add_argument("--batch", type=count(MAX_BATCH), default=32, help="batch size of the throughput run (default 32)")
    p.add_argument(
        "--runs",
        type=count(MAX_RUNS),
        default=100,
        help="timed batch-1 runs per candidate, spread over rounds (default 100)",
    )
    p.add_argument("--no-baselines", action="store_true", help="time the artifacts only")
    p.add_argument(
        "--config",
        type=Path,
        help="with a BUILD_DIR: the build's config (needed when its stored config names Python code: a build folder "
        "is data, deployc never runs code it names)",
    )
    p.set_defaults(func=_cmd_bench)
    return p
