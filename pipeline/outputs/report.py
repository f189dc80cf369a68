"""report.md: what a person reads after a build — artifacts, gates, passes, the pipeline string."""

from __future__ import annotations

from typing import Any

from deployc.core.config import metric_label
from deployc.validation.gates import more_on_cpu, proxy_runtime


def human_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _with_timings(records: list[dict[str, Any]], timed: list[dict[str, Any]], scope: str) -> list[dict[str, Any]]:
    """Pass records joined with their wall-clock part (timings.json): seconds, cache hit, full tables."""
    out = []
    for i, p in enumerate(records):
        t = timed[i] if i < len(timed) else {}
        out.append(
            dict(
                p,
                scope=scope,
                seconds=t.get("seconds"),
                cached=t.get("cached", False),
                timings=t.get("timings", {}),
                tables=t.get("tables", p.get("tables", [])),
            )
        )
    return out


def _shared_prefix(histories: list[list[dict[str, Any]]]) -> int:
    """How many leading pass records every artifact of one target shares (export, simplify...)."""
    n = min(len(h) for h in histories)
    return next((i for i in range(n) if any(h[i] != histories[0][i] for h in histories)), n)


def report_view(manifest: dict[str, Any], timings: dict[str, Any]) -> dict[str, Any]:
    """The manifest plus wall-clock figures (kept out of manifest.json so it stays deterministic), and
    `all_passes`: the pipeline's passes, then each target's (passes its artifacts share listed once)."""
    perf = timings.get("artifacts", {})
    arts = [dict(a, perf=perf.get(f"{a['target']}/{a['precision']}", {})) for a in manifest["artifacts"]]
    passes = _with_timings(manifest["passes"], timings.get("passes", []), "pipeline")
    per_artifact = timings.get("artifact_passes", {})
    all_passes = list(passes)
    for target in dict.fromkeys(a["target"] for a in arts):
        group = [a for a in arts if a["target"] == target and a.get("passes")]
        if not group:
            continue
        shared = _shared_prefix([a["passes"] for a in group])
        for k, a in enumerate(group):
            label = f"{a['target']}/{a['precision']}"
            joined = _with_timings(a["passes"], per_artifact.get(label, []), label)
            all_passes += [dict(p, scope=target) for p in joined[:shared]] if k == 0 else []
            all_passes += joined[shared:]
    return dict(manifest, artifacts=arts, passes=passes, all_passes=all_passes, timings=timings)


# marks any monospace font has (no emoji: without an emoji font they render as empty boxes)
GATE_MARK = {"pass": "✓ pass", "fail": "✗ fail", "skipped": "○ skipped", "error": "! error"}
PERCENT_METRICS = ("top1", "top5")  # fractions of samples: drift reads best in percentage points


ARTIFACT_COLUMNS = ("target", "precision", "size", "int8", "drift", "ms/sample", "gate")  # metric goes after size


def gate_text(gate: dict[str, Any], runtime: str | None, details: dict[str, Any], mark: bool = False) -> str:
    """'pass', or 'pass (proxy: onnxruntime, engine not built)': a proxy result never reads as a plain pass."""
    status = gate.get("status") or "—"
    text = GATE_MARK.get(status, status) if mark else status
    proxy = proxy_runtime(runtime, details or {})
    return f"{text} (proxy: {proxy}, engine not built)" if proxy and status in ("pass", "fail") else text


def int8_text(artifact: dict[str, Any]) -> str:
    """Share of the artifact's MACs (or weights, 'w') that run in int8; '—' when not measured."""
    cov = (artifact.get("details") or {}).get("int8_coverage") or {}
    if isinstance(cov.get("macs"), (int, float)):
        return f"{cov['macs']:.0%}"
    if isinstance(cov.get("weights"), (int, float)):
        return f"{cov['weights']:.0%} w"
    return "—"


def proxy_of(artifact: dict[str, Any]) -> str | None:
    """The stand-in runtime an artifact ran on (TensorRT validated on onnxruntime), else None: its latency is the
    stand-in's, so it is shown as 'proxy' and kept off every latency axis and out of every ratio."""
    return proxy_runtime(artifact.get("runtime"), artifact.get("details") or {})


def latency_text(artifact: dict[str, Any]) -> str:
    """Batch-1 ms/sample, 'proxy' when measured on a stand-in runtime, '—' when not measured."""
    if proxy_of(artifact):
        return "proxy"
    ms = (artifact.get("perf") or {}).get("latency_ms_batch1")
    return f"{ms:.3f}" if isinstance(ms, (int, float)) else "—"


def drift_text(m: dict[str, Any], metric: str) -> str:
    """Drift in the metric's own units: top1/top5 as percentage points, any other metric as the raw difference."""
    drift = m.get("drift")
    if not isinstance(drift, (int, float)):
        return "—"
    return f"{drift * 100:+.2f}%" if metric in PERCENT_METRICS else f"{drift:+.4g}"


def artifact_rows(manifest: dict[str, Any]) -> list[list[str]]:
    """One row per artifact: target, precision, size, metric, int8, drift, ms/sample, gate (shared with the CLI)."""
    rows = []
    metric = manifest["reference"]["metric"]
    for a in manifest["artifacts"]:
        m, gate = a.get("metrics") or {}, a.get("gate") or {}
        value = m.get("metric")
        rows.append(
            [
                a["target"],
                a["precision"],
                human_bytes(a.get("bytes")),
                f"{value:.4f}" if isinstance(value, (int, float)) else "—",
                int8_text(a),
                drift_text(m, metric),
                latency_text(a),
                gate_text(gate, a.get("runtime"), a.get("details") or {}, mark=True),
            ]
        )
    return rows


def artifact_header(metric: str) -> list[str]:
    return [*ARTIFACT_COLUMNS[:3], metric_label(metric), *ARTIFACT_COLUMNS[3:]]


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _seconds(p: dict[str, Any]) -> str:
    if p.get("seconds") is None:
        return "—"
    return f"{p['seconds']:.2f}" + (" (cached)" if p.get("cached") else "")


def _target_notes(details: dict[str, Any]) -> str:
    """Target facts a reader must see: engine status, NPU integer-only check, quantizer notes."""
    out = ""
    if "engine" in details:
        engine = details["engine"]
        out += f"; engine: {engine if isinstance(engine, str) else engine.get('status', engine)}"
    npu = details.get("npu")
    if npu:
        floats = [f"{o['op']}#{o['index']}" for o in npu.get("float_ops", [])]
        out += "; NPU: integer-only" if npu.get("integer_only") else f"; NPU: float ops: {', '.join(floats)}"
        if not npu.get("accelerators") and npu.get("check", "vela") != "vela":
            out += f" ({npu['check']})"
        for name, report in (npu.get("accelerators") or {}).items():
            out += f"; {name} (Vela): {npu_text(report)}"
    if details.get("notes"):
        out += "; notes: " + "; ".join(details["notes"])
    if details.get("warnings"):
        out += "; warning: " + "; ".join(str(w) for w in details["warnings"])
    return out


def npu_text(report: dict[str, Any]) -> str:
    """'59/59 ops on the NPU' or '9/10 ops on the NPU; CPU: MEAN (Unsupported depth-reduction ...)'."""
    if "error" in report:
        return f"not compiled: {report['error']}"
    text = f"{report['npu_ops']}/{report['npu_ops'] + report['cpu_ops']} ops on the NPU"
    if report.get("cpu_fallback"):
        text += "; CPU: " + "; ".join(f"{c['op']} ({c['reason']})" for c in report["cpu_fallback"])
        text += more_on_cpu(report)
    return text


def _kib(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "—"


def npu_rows(manifest: dict[str, Any]) -> list[list[str]]:
    """One row per artifact and accelerator Vela compiled it for (shared with report.html)."""
    rows = []
    for a in manifest["artifacts"]:
        for name, r in (((a.get("details") or {}).get("npu") or {}).get("accelerators") or {}).items():
            ms = r.get("inference_ms")
            rows.append(
                [
                    f"{a['target']}/{a['precision']}",
                    name,
                    f"{r.get('system_config') or '—'}, {r.get('memory_mode') or '—'}",
                    "—" if "error" in r else f"{r['npu_ops']}/{r['npu_ops'] + r['cpu_ops']}",
                    f"{ms:.3f}" if isinstance(ms, (int, float)) else "—",
                    _kib(r.get("sram_kib")),
                    _kib(r.get("flash_kib")),
                    r["error"]
                    if "error" in r
                    else "; ".join(f"{c['op']}: {c['reason']}" for c in r["cpu_fallback"]) + more_on_cpu(r),
                ]
            )
    return rows


NPU_HEADER = [
    "artifact",
    "accelerator",
    "Vela system config, memory mode",
    "ops on NPU",
    "est. ms",
    "SRAM KiB",
    "flash KiB",
    "on the CPU (Vela's reason)",
]


def proxy_note(artifact: dict[str, Any]) -> str:
    """'; latency 24.1 ms/sample measured on onnxruntime, a proxy: not a TensorRT figure' for a proxy artifact."""
    proxy, ms = proxy_of(artifact), (artifact.get("perf") or {}).get("latency_ms_batch1")
    if not proxy or not isinstance(ms, (int, float)):
        return ""
    return f"; latency {ms:.3f} ms/sample measured on {proxy}, a proxy: not a {artifact['target']} figure"


def budget_text(manifest: dict[str, Any]) -> str:
    """'budget: top1 drift ≤ 0.01 (top1 units; metric reads output_0)' — what the gate holds artifacts to."""
    ref, budget = manifest["reference"], manifest["budget"]
    limit = budget["max_drift"]
    shown = f"{limit * 100:.2f}%" if ref["metric"] in PERCENT_METRICS else f"{limit:g}"
    text = f"budget: {metric_label(ref['metric'])} drift ≤ {shown} (in {metric_label(ref['metric'])} units"
    covered = ref.get("metric_outputs")
    if covered:
        text += f"; the metric reads {', '.join(covered)}"
    text += ")"
    if budget.get("min_int8_coverage") is not None:
        text += f", int8 coverage ≥ {budget['min_int8_coverage']:.0%}"
    return text


def render_report(manifest: dict[str, Any]) -> str:
    ref = manifest["reference"]
    out = [
        f"# deployc build: {manifest['name']}",
        "",
        *([f"**Diagnosis:** {manifest['diagnosis']}", ""] if manifest.get("diagnosis") else []),
        f"Status: **{manifest['status']}** — {budget_text(manifest)}",
        "",
        f"Pipeline: `{manifest['pipeline']}`",
        "",
        f"Reference ({ref['source']}): {ref['metric']} = {ref['value']:.4f} on {ref['samples']} samples "
        "(the model as loaded, before any pass)",
        "",
        "## Artifacts",
        "",
        markdown_table(artifact_header(ref["metric"]), artifact_rows(manifest)),
        "",
    ]
    details = []
    for a in manifest["artifacts"]:
        m, gate = a.get("metrics") or {}, a.get("gate") or {}
        extra = ", ".join(f"{k} {m[k]:.4g}" for k in ("agreement", "max_abs_err", "cosine") if k in m)
        if len(m.get("outputs") or {}) > 1:
            extra += "; per output: " + ", ".join(
                f"{name} max_abs_err {o['max_abs_err']:.3g} cosine {o['cosine']:.4f}"
                for name, o in m["outputs"].items()
            )
        details.append(
            f"- `{a['target']}/{a['precision']}` — {gate.get('reason', '')}"
            + (f"; {extra}" if extra else "")
            + _target_notes(a.get("details") or {})
            + proxy_note(a)
            + (f"; int8 tuned for {a['perf']['int8_tuned_for']}" if (a.get("perf") or {}).get("int8_tuned_for") else "")
            + (f"; `{a['path']}`" if a.get("path") else "")
        )
    out += ["### Gates", "", *details, ""]
    npu = npu_rows(manifest)
    if npu:
        out += [
            "## NPU placement (Vela)",
            "",
            "Estimates from Arm's Vela compiler with its default system configuration for each accelerator; a SoC's "
            "own vela.ini changes time and memory, not which ops run on the NPU.",
            "",
            markdown_table(NPU_HEADER, npu),
            "",
        ]
    where = (manifest.get("timings") or {}).get("machine")
    if where:
        out += [
            f"Latency measured on {where['cpu']} ({where['cores']} cores, load average {where['load_average']} "
            "at the end of the build); int8 artifacts are tuned for this CPU unless targets.onnx.cpu names another.",
            "",
        ]
    passes = manifest.get("all_passes", manifest["passes"])
    if passes:
        rows = [
            [
                p["name"],
                p.get("scope", "pipeline"),
                "yes" if p["modified"] else "no",
                _seconds(p),
                ", ".join(f"{k}={_fmt(v)}" for k, v in p["metrics"].items() if not isinstance(v, (dict, list))),
            ]
            for p in passes
        ]
        out += ["## Passes", "", markdown_table(["pass", "for", "modified", "seconds", "metrics"], rows), ""]
    for p in passes:
        for table in p.get("tables", []):
            out += [
                f"## {table['title']}",
                "",
                markdown_table(table["header"], [[str(c) for c in r] for r in table["rows"]]),
                "",
            ]
    out += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()), ""]
    return "\n".join(out)
