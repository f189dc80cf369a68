"""`deployc bench CONFIG|BUILD_DIR`: every artifact of a build side by side with the baselines people
would otherwise ship — torch eager fp32, onnxruntime on a plain export, a plain
`onnxruntime.quantization.quantize_static`, litert-torch's default conversion — measured in one
process, with warm-up: batch-1 latency percentiles, throughput at a larger batch, peak memory,
size and the metric on the validation set. Ratios are to torch eager."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployc.errors import UsageError
from deployc.ort import CalibrationReader, session
from deployc.state import dynamic_shapes
from deployc.timing import sample_ms
from deployc.validate import as_arrays, compare, compute_reference, run_batched

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
EAGER = "torch eager fp32"
EAGER_1T = "torch eager fp32, 1 thread"
QSTATIC = "ort quantize_static (plain)"


@dataclass
class Candidate:
    """One thing to measure: `open()` loads it (session, interpreter) and returns its runner."""

    name: str
    kind: str  # "artifact" or "baseline"
    open: Callable[[], Runner]
    bytes: int | None = None
    close: Callable[[], None] = lambda: None
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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


# ---- baselines -------------------------------------------------------------------------------------


def _torch_runner(module: Any, names: list[str]) -> Runner:
    import torch

    def run(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            return as_arrays(module(*[torch.from_numpy(batch[n]) for n in names]))

    return run


def _ort_runner(path: Path) -> Runner:
    sess = session(path)
    return lambda batch: sess.run(None, batch)


def _single_thread_eager(module: Any, names: list[str], weight_bytes: int) -> Candidate:
    """Eager with one intra-op thread: on a busy machine OpenMP's spinning threads can cost eager 10×."""
    import torch

    before = torch.get_num_threads()

    def open_() -> Runner:
        torch.set_num_threads(1)
        return _torch_runner(module, names)

    return Candidate(EAGER_1T, "baseline", open_, weight_bytes, close=lambda: torch.set_num_threads(before))


def _plain_export(module: Any, state: Any, path: Path) -> Path:
    """torch.onnx.export (dynamo) with its defaults and a dynamic batch axis; no deployc passes."""
    import torch

    program = torch.onnx.export(
        module,
        state.example_tensors(batch=2),
        dynamo=True,
        input_names=[s.name for s in state.inputs],
        dynamic_shapes=dynamic_shapes(state.inputs),
    )
    program.save(str(path))
    return path


def _plain_quantize_static(src: Path, calibration: Any, samples: int, path: Path) -> Path:
    """onnxruntime.quantization.quantize_static with every option at its default."""
    from onnxruntime.quantization import quantize_static

    quantize_static(str(src), str(path), CalibrationReader(calibration.take(samples), 16))
    return path


def _litert_runner(path: Path) -> Runner:
    """ai-edge-litert Interpreter on a batch-1 .tflite; larger batches run row by row."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    ins, outs = interp.get_input_details(), interp.get_output_details()

    def one(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        for detail, arr in zip(ins, batch.values()):
            interp.set_tensor(detail["index"], arr)
        interp.invoke()
        return [interp.get_tensor(o["index"]).copy() for o in outs]

    def run(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = [one({k: v[i : i + 1] for k, v in batch.items()}) for i in range(len(next(iter(batch.values()))))]
        return [np.concatenate([r[j] for r in rows]) for j in range(len(outs))]

    return run


def _litert_default(module: Any, state: Any, path: Path) -> Path:
    import litert_torch

    litert_torch.convert(module.eval(), state.example_tensors(batch=1)).export(str(path))
    return path


def baseline_candidates(state: Any, calibration: Any, samples: int, work: Path) -> list[Candidate]:
    """Eager, ORT fp32 of a plain export, plain quantize_static, litert-torch default (torch models)."""
    names = [s.name for s in state.inputs]
    cands: list[Candidate] = []
    plain = work / "plain.fp32.onnx"
    if state.module is not None:
        module = state.module.eval()
        weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
        cands.append(Candidate(EAGER, "baseline", lambda: _torch_runner(module, names), weight_bytes))
        cands.append(_single_thread_eager(module, names, weight_bytes))
        made = _guard(lambda: _plain_export(module, state, plain))
    else:
        import onnx

        onnx.save(state.onnx, str(plain))
        made = None
    cands.append(_file_candidate("ort fp32 (plain export)", plain, _ort_runner, made))
    qpath = work / "plain.qstatic.onnx"
    qmade = made or (None if calibration is not None else "no calibration data")
    if qmade is None:
        qmade = _guard(lambda: _plain_quantize_static(plain, calibration, samples, qpath))
    cands.append(_file_candidate(QSTATIC, qpath, _ort_runner, qmade))
    if state.module is not None:
        tpath = work / "litert.default.tflite"
        tmade = _guard(lambda: _litert_default(state.module, state, tpath))
        cands.append(_file_candidate("litert-torch default (batch 1)", tpath, _litert_runner, tmade))
    return cands


def _guard(fn: Callable[[], Any]) -> str | None:
    """None when fn ran, else why not — a baseline that fails to build is reported, not fatal."""
    import io
    import logging
    from contextlib import redirect_stderr, redirect_stdout

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static and litert-torch log progress; bench logs its own lines
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            fn()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    finally:
        root.setLevel(level)


def _skipped(name: str, kind: str, reason: str) -> Candidate:
    def unavailable() -> Runner:
        raise RuntimeError(reason)

    return Candidate(name, kind, unavailable, skipped=reason)


def _file_candidate(name: str, path: Path, runner: Callable[[Path], Runner], failed: str | None) -> Candidate:
    if failed:
        return _skipped(name, "baseline", failed)
    return Candidate(name, "baseline", lambda: runner(path), path.stat().st_size)


# ---- artifacts -------------------------------------------------------------------------------------


def artifact_candidates(manifest: dict[str, Any], build_dir: Path) -> list[Candidate]:
    """Each artifact of the manifest, run through its Target's infer() from the registry."""
    from deployc.contracts import Artifact
    from deployc.registry import get_target

    cands = []
    for a in manifest["artifacts"]:
        label = f"{a['target']}/{a['precision']}"
        gate = a.get("gate") or {}
        if gate.get("status") == "skipped" or not a.get("path"):
            cands.append(_skipped(label, "artifact", gate.get("reason") or "not built"))
            continue
        try:
            cls = get_target(a["target"])
            target = cls(cls.Options.model_validate(manifest["config"]["targets"].get(a["target"]) or {}))
        except Exception as exc:
            cands.append(_skipped(label, "artifact", str(exc.args[0] if exc.args else exc)))
            continue
        art = Artifact(
            a["target"],
            a["precision"],
            build_dir / a["path"],
            a.get("runtime", ""),
            a.get("runtime_version", ""),
            a.get("inputs") or [],
            a.get("outputs") or [],
            a.get("details") or {},
        )
        cands.append(
            Candidate(
                label,
                "artifact",
                lambda t=target, x=art: lambda b: t.infer(x, b),
                a.get("bytes"),
                close=lambda t=target, x=art: t.close(x),
                extra={"gate": gate.get("status")},
            )
        )
    return cands


# ---- measuring -------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(
    cand: Candidate, data: Any, reference: Any, batch: int, runs: int, eval_batch: int, min_seconds: float = 1.0
) -> dict[str, Any]:
    """Metric over the validation set, batch-1 latency p50/p90/p99, throughput at `batch`, peak RSS."""

    row: dict[str, Any] = {"name": cand.name, "kind": cand.kind, "bytes": cand.bytes, **cand.extra}
    if cand.skipped:
        return {**row, "skipped": cand.skipped}
    one = {k: v[:1] for k, v in data.inputs.items()}
    reps = -(-batch // len(data))
    big = {k: np.concatenate([v] * reps)[:batch] for k, v in data.inputs.items()}
    try:
        with PeakRss() as mem:
            run = cand.open()
            row.update(
                {
                    k: v
                    for k, v in compare(run_batched(run, data, eval_batch), reference).items()
                    if k in ("metric", "drift", "agreement", "cosine")
                }
            )
            times = sample_ms(lambda: run(one), runs, warmup=max(3, runs // 10))
            run(big)
            n_big, t0 = 0, time.perf_counter()
            while n_big < 3 or time.perf_counter() - t0 < min_seconds:  # long enough to average out scheduler noise
                run(big)
                n_big += 1
            throughput = n_big * batch / (time.perf_counter() - t0)
    except Exception as exc:
        return {**row, "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]}
    finally:
        cand.close()
        gc.collect()
    row.update(
        p50_ms=_percentile(times, 50),
        p90_ms=_percentile(times, 90),
        p99_ms=_percentile(times, 99),
        throughput=throughput,
        peak_mb=mem.peak_mb,
    )
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Latency, throughput and size relative to torch eager; latency also relative to plain quantize_static."""
    base = {r["name"]: r for r in rows if "p50_ms" in r}
    eager, qs = base.get(EAGER), base.get(QSTATIC)
    for r in rows:
        if "p50_ms" not in r:
            continue
        if eager:
            r["x_eager_p50"] = r["p50_ms"] / eager["p50_ms"]
            r["x_eager_throughput"] = r["throughput"] / eager["throughput"]
            if r.get("bytes") and eager.get("bytes"):
                r["x_eager_size"] = r["bytes"] / eager["bytes"]
        if qs:
            r["x_qstatic_p50"] = r["p50_ms"] / qs["p50_ms"]


def bench_table(result: dict[str, Any]) -> dict[str, Any]:
    """The bench as a {title, header, rows} table (report.md / report.html render these)."""
    from deployc.report import human_bytes

    def f(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r[key], fmt) if r.get(key) is not None else "—"

    metric = result["metric"]
    header = [
        "candidate",
        "size",
        metric,
        "drift",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        f"samples/s @{result['batch']}",
        "peak MB",
        "×eager p50",
        "×eager samples/s",
        "×eager size",
        "×qstatic p50",
    ]
    rows = []
    for r in result["rows"]:
        if r.get("skipped"):
            rows.append([r["name"], human_bytes(r.get("bytes")), f"skipped: {r['skipped']}"] + ["—"] * 10)
            continue
        drift = f"{r['drift'] * 100:+.2f}%" if r.get("drift") is not None else "—"
        rows.append(
            [
                r["name"],
                human_bytes(r.get("bytes")),
                f(r, "metric", ".4f"),
                drift,
                f(r, "p50_ms", ".3f"),
                f(r, "p90_ms", ".3f"),
                f(r, "p99_ms", ".3f"),
                f(r, "throughput", ".1f"),
                f(r, "peak_mb", ".1f"),
                f(r, "x_eager_p50", ".3f"),
                f(r, "x_eager_throughput", ".2f"),
                f(r, "x_eager_size", ".3f"),
                f(r, "x_qstatic_p50", ".3f"),
            ]
        )
    title = (
        f"Benchmark: {result['model']} — batch-1 latency over {result['runs']} runs after warm-up, "
        f"{result['cpu_count']} CPU cores, load average {result['load_average']:.1f} at start"
    )
    return {"title": title, "header": header, "rows": rows}


def _resolve(
    target_path: Path, out: Path | None, config_dir: Path | None, quiet: bool, cache: bool
) -> tuple[dict, Path, Any]:
    """(manifest, build dir, BuildConfig with paths resolving like the original) for a CONFIG or a BUILD_DIR."""
    from deployc.config import load_config

    if target_path.is_dir():
        mpath = target_path / "manifest.json"
        if not mpath.is_file():
            raise UsageError(f"{target_path}: no manifest.json (not a finished deployc build folder)")
        manifest = json.loads(mpath.read_text())
        base = config_dir or Path(manifest.get("config_dir") or Path.cwd())
        return manifest, target_path, load_config(manifest["config"], base_dir=Path(base))
    from deployc.build import build

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
    from deployc.data import calibration_source, load_dataset
    from deployc.instruments import Instruments
    from deployc.loader import load_model
    from deployc.metrics import get_metric

    log = Instruments(quiet=quiet).log
    target_path = Path(target_path)
    if not target_path.exists():
        raise UsageError(f"{target_path}: no such config file or build folder")
    manifest, build_dir, config = _resolve(
        target_path, Path(out) if out else None, Path(config_dir) if config_dir else None, quiet, cache
    )
    state = load_model(config)
    validation = load_dataset(config.data.validation, config, state.inputs, "validation")
    calib_src = calibration_source(config)
    calibration = load_dataset(calib_src, config, state.inputs, "calibration") if calib_src else None
    reference = compute_reference(state, validation, get_metric(config), config.data.batch_size)
    rows = []
    load = os.getloadavg()[0]  # other work on the machine skews timings; the table says how busy it was
    with tempfile.TemporaryDirectory(prefix="deployc-bench-") as work:
        cands = []
        if baselines:
            log("bench: building baselines (plain export, quantize_static, litert-torch default)")
            cands += baseline_candidates(state, calibration, config.quantize.samples, Path(work))
        cands += artifact_candidates(manifest, build_dir)
        for cand in cands:
            row = measure(cand, validation, reference, batch, runs, config.data.batch_size, min_seconds)
            log(
                f"bench: {cand.name}: "
                + (
                    f"skipped ({row['skipped']})"
                    if "skipped" in row
                    else f"p50 {row['p50_ms']:.3f} ms, {row['throughput']:.0f} samples/s"
                )
            )
            rows.append(row)
    add_ratios(rows)
    result = {
        "model": manifest["name"],
        "build_dir": str(build_dir),
        "metric": reference.metric.name,
        "reference": reference.value,
        "batch": batch,
        "runs": runs,
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "rows": rows,
    }
    result["table"] = bench_table(result)
    _write(result, Path(out) if out else build_dir, manifest)
    return result


def _write(result: dict[str, Any], out_dir: Path, manifest: dict[str, Any]) -> None:
    from deployc.manifest import write_json_atomic
    from deployc.report import markdown_table
    from deployc.report_html import write_html_report

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
        Console(file=sys.stdout, width=200).print(table)
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
    p.add_argument("--runs", type=int, default=100, help="timed batch-1 runs per candidate (default 100)")
    p.add_argument("--no-baselines", action="store_true", help="time the artifacts only")
    p.add_argument(
        "--config-dir",
        type=Path,
        help="folder the build's config paths are relative to (default: manifest config_dir, else the current folder)",
    )
    p.set_defaults(func=_cmd_bench)
    return p
