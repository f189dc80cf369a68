"""`deployc sweep SWEEP.yaml --out DIR`: build every variant of a base config on Ray — an embedded local Ray by
default, a running cluster with --address — and report the Pareto front of the validated artifacts.

DIR/<variant-id>/ is an ordinary build of the variant's config; DIR/sweep.json, report.html and junit.xml
sum them up. Exit 0 when the objective picked an artifact, 3 when none qualifies, 2 on a bad sweep file."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from deployc.cli import count, in_range
from deployc.compiler.instruments import Instruments
from deployc.errors import UsageError
from deployc.storage.files import write_json_atomic
from deployc.storage.outdir import OutDir, check_out_dir, read_marker
from deployc.sweep.plan import Planned
from deployc.sweep.report import write_sweep_reports
from deployc.sweep.results import (
    check_variant,
    objective_value,
    reference_of,
    sweep_summary,
    variant_entry,
    verified_build,
)
from deployc.sweep.runner import (
    Outcome,
    RayExecutor,
    check_cluster,
    check_local_cpus,
    executor_info,
    refuse_planted,
    start_ray,
)
from deployc.sweep.search import FixedSearch, make_search
from deployc.sweep.spec import load_sweep

MAX_PARALLEL = 4096


def run_sweep(
    sweep_path: str | Path,
    out: str | Path,
    address: str | None = None,
    max_parallel: int | None = None,
    resume: bool = False,
    cache: bool = True,
    quiet: bool = False,
    ray_temp_dir: str | Path | None = None,
    debug: bool = False,
) -> dict[str, Any]:
    """Run the sweep; returns what DIR/sweep.json holds. Raises UsageError (nothing built) on a bad sweep file."""
    t0 = time.perf_counter()
    sweep = load_sweep(sweep_path)
    if max_parallel is not None:
        in_range("--max-parallel", max_parallel, 1, MAX_PARALLEL)
    search = make_search(sweep)
    # every config the search may build is checked (milliseconds each) before Ray starts: a bad one is exit 2.
    # tpe proposes from a space that may be far larger: each vary value is checked once instead
    if search.adaptive:
        variants = sweep.one_value_each()
    else:
        variants = search.ask(sys.maxsize)
        search = FixedSearch(variants)
    checked = {v.id: check_variant(sweep, v) for v in variants}
    out = Path(out).resolve()
    check_out_dir(out)  # a new or empty folder, or one deployc wrote (an earlier sweep)
    for v in [] if search.adaptive else variants:
        refuse_planted(out / v.id)
    check_local_cpus(address, sweep.config.resources, sweep.path)
    if (out / "manifest.json").exists():
        raise UsageError(f"--out: '{out}' holds a deployc build; a sweep writes one build per variant below it")
    marker = read_marker(out) if out.exists() else None
    if (out / "sweep.json").exists() and (marker is None or "sweep.json" not in marker["files"]):
        raise UsageError(f"--out: '{out / 'sweep.json'}' was not written by deployc; it is never replaced")
    total = min(sweep.config.search.trials or sweep.size, sweep.size) if search.adaptive else len(variants)
    instruments = Instruments(quiet=quiet)
    entries: dict[str, dict[str, Any]] = {}
    with OutDir(out) as outdir, instruments.third_party_quiet(enabled=not debug):  # Ray's output captured too
        started = False
        try:
            started = start_ray(address, ray_temp_dir)
            check_cluster(sweep.config.resources, sweep.path)  # a task no node can hold would wait forever
            executor = executor_info(address)
            instruments.log(
                f"sweep: {total} variants of {sweep.base_path.name} on Ray {executor['version']} "
                f"({executor['nodes']} node(s), {executor['cpus']:g} CPUs)"
            )
            runner = RayExecutor(out, sweep.config.resources, sweep.config.retries, max_parallel, cache)
            with instruments.progress("variants", total) as advance:

                def on_done(p: Planned, outcome: Outcome) -> None:
                    run = runner.prefixes.get(outcome.prefix) if outcome.prefix else None
                    entry = variant_entry(p, outcome, run.node.label if run else None)
                    entries[p.variant.id] = entry
                    search.tell(p.variant, objective_value(entry, sweep.config.objective))
                    why = f": {entry['reason']}" if entry["reason"] else ""
                    instruments.log(f"{p.variant.id}: {'resumed, ' if outcome.resumed else ''}{entry['status']}{why}")
                    advance(1, last=p.variant.id)

                runner.run(
                    search,
                    lambda v: checked.get(v.id) or check_variant(sweep, v),
                    lambda p: verified_build(out / p.variant.id, p) if resume else None,
                    on_done,
                )
        finally:
            if started:
                import ray

                ray.shutdown()
        prefixes = [
            {
                "id": key,
                "pipeline": r.node.label,
                "passes": r.node.passes,
                "parent": r.node.parent,
                "variants": r.node.members,
                "status": r.status,
                "seconds": r.seconds,
                "error": r.error,
            }
            for key, r in runner.prefixes.items()
        ]
        outcomes = [runner.outcomes[k] for k in entries]
        summary = sweep_summary(
            sweep, executor, list(entries.values()), prefixes, reference_of(outcomes), time.perf_counter() - t0
        )
        write_sweep_reports(summary, outdir.staging)
        write_json_atomic(outdir.staging / "sweep.json", summary)
        outdir.publish()
    return summary


def print_pareto(summary: dict[str, Any], stream: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from deployc.outputs.report import human_bytes

    metric = (summary["reference"] or {}).get("metric", "metric")
    chosen = summary["chosen"]
    table = Table(title=f"deployc sweep: {summary['name']} — Pareto front of the passing artifacts")
    for col in ("variant", "artifact", metric, "drift", "size", "ms (batch 1)", ""):
        table.add_column(col, justify="left" if col in ("variant", "artifact", "") else "right")
    for a in summary["pareto"]:
        is_chosen = chosen is not None and all(chosen[k] == a[k] for k in ("variant", "target", "precision"))
        table.add_row(
            a["variant"],
            f"{a['target']}/{a['precision']}",
            f"{a['metric']:.4f}",
            f"{a['drift'] * 100:+.2f}%",
            human_bytes(a["bytes"]),
            f"{a['latency_ms']:.3f}",
            "★ chosen" if is_chosen else "",
        )
    Console(file=stream or sys.stdout, width=130).print(table)


def _cmd_sweep(args: argparse.Namespace) -> int:
    summary = run_sweep(
        args.sweep,
        args.out,
        address=args.address,
        max_parallel=args.max_parallel,
        resume=args.resume,
        cache=not args.no_cache,
        quiet=args.quiet or args.json,
        debug=args.debug,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print_pareto(summary)
        counts = summary["counts"]
        print(
            f"{counts['passed']}/{counts['variants']} variants passed; wrote {args.out}/sweep.json, "
            "report.html and junit.xml",
            file=sys.stderr,
        )
    return 0 if summary["chosen"] is not None else 3


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep",
        parents=parents or [],
        help="build every variant a sweep file describes on Ray and report the Pareto front",
        description="Exit 0 when the objective picked an artifact, 3 when none qualifies, 2 on a bad sweep file.",
    )
    p.add_argument("sweep", type=Path, help="SWEEP.yaml: base config, vary, search, objective")
    p.add_argument("--out", type=Path, required=True, help="folder: one build per variant, sweep.json, report.html")
    p.add_argument("--address", help="a running Ray cluster (ray start --head prints it); default: a local Ray")
    p.add_argument(
        "--max-parallel",
        type=count(MAX_PARALLEL),
        help="builds running at once (default: as many as Ray has CPUs for)",
    )
    p.add_argument("--resume", action="store_true", help="skip variants whose build in DIR verifies against its hashes")
    p.set_defaults(func=_cmd_sweep)
    return p
