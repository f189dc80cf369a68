"""`deployc bench CONFIG|BUILD_DIR`: every artifact of a build side by side with the baselines people would
otherwise ship (see bench_baselines.py), in one process. Each candidate is opened and scored on the validation
set (metric, peak memory); then all of them are timed together in interleaved rounds after warm-up (batch-1
latency, then throughput at a larger batch), so load on a shared machine hits every candidate alike. Rows
give medians with their spread (IQR); ratios to torch eager are taken within each round; a row whose spread
is large is marked unstable, and the table states the load average before and after."""

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

from deployc.errors import UsageError


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
    target_path: Path, out: Path | None, config_dir: Path | None, quiet: bool, cache: bool
) -> tuple[dict, Path, Any]:
    """(manifest, build dir, BuildConfig with paths resolving like the original) for a CONFIG or a BUILD_DIR."""
    from deployc.core.config import load_config

    if target_path.is_dir():
        mpath = target_path / "manifest.json"
        if not mpath.is_file():
            raise UsageError(f"{target_path}: no manifest.json (not a finished deployc build folder)")
        manifest = json.loads(mpath.read_text())
        base = config_dir or Path(manifest.get("config_dir") or Path.cwd())
        return manifest, target_path, load_config(manifest["config"], base_dir=Path(base))
    from deployc.driver.build import build

    result = build(target_path, out=out, quiet=quiet, cache=cache)
    return result.manifest, result.out_dir, load_config(target_path)


def run_bench(
    target_path: str | Path,
    out: str | Path | None = None,
    batch: int = 32,
    runs: int = 100,
    baselines: bool = True,
    config_dir: str | Path | None = None,
    quiet: bool = False,
    min_seconds: float = 1.0,
    cache: bool = True,
) -> dict[str, Any]:
    """Benchmark a build (BUILD_DIR) or build a CONFIG first; writes bench.json + bench.md to `out`
    (default: the build folder) and returns the result dict (rows, ratios, the table)."""
    import numpy as np

    from deployc.commands.bench_baselines import artifact_candidates, baseline_candidates
    from deployc.compiler.instruments import Instruments
    from deployc.validation.preflight import load_checked

    log = Instruments(quiet=quiet).log
    target_path = Path(target_path)
    if not target_path.exists():
        raise UsageError(f"{target_path}: no such config file or build folder")
    manifest, build_dir, config = _resolve(
        target_path, Path(out) if out else None, Path(config_dir) if config_dir else None, quiet, cache
    )
    inputs = load_checked(config, train=False)  # the build's own data door: same contract, same reference
    state, validation, calibration, reference = inputs.state, inputs.validation, inputs.calibration, inputs.reference
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
    _write(result, Path(out) if out else build_dir, manifest)
    return result


def _write(result: dict[str, Any], out_dir: Path, manifest: dict[str, Any]) -> None:
    from deployc.outputs.report import markdown_table
    from deployc.outputs.report_html import write_html_report
    from deployc.storage.files import write_json_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "bench.json", result)
    t = result["table"]
    (out_dir / "bench.md").write_text(f"## {t['title']}\n\n{markdown_table(t['header'], t['rows'])}\n")
    if (out_dir / "manifest.json").is_file():
        write_html_report(manifest, out_dir, extra_tables=[t])  # the report shows the bench beside the build


def _cmd_bench(args: argparse.Namespace) -> int:
    result = run_bench(
        args.target,
        out=args.out,
        batch=args.batch,
        runs=args.runs,
        baselines=not args.no_baselines,
        config_dir=args.config_dir,
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
    p.add_argument("--out", type=Path, help="where bench.json/bench.md go (default: the build folder)")
    p.add_argument("--batch", type=int, default=32, help="batch size of the throughput run (default 32)")
    p.add_argument(
        "--runs", type=int, default=100, help="timed batch-1 runs per candidate, spread over rounds (default 100)"
    )
    p.add_argument("--no-baselines", action="store_true", help="time the artifacts only")
    p.add_argument(
        "--config-dir",
        type=Path,
        help="folder the build's config paths are relative to (default: manifest config_dir, else the current folder)",
    )
    p.set_defaults(func=_cmd_bench)
    return p
