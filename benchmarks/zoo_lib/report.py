"""zoo.md / zoo.json: one row per model × target × precision from each build's manifest.json and timings.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deployc.passes.coverage import percent


def int8_coverage(art: dict[str, Any]) -> str:
    """deployc's int8 coverage of an int8/dynamic artifact (details.int8_coverage): MAC share, else weight share."""
    own = (art.get("details") or {}).get("int8_coverage")
    if not own:
        return "—"
    if own.get("macs") is not None:
        return f"{percent(own['macs'])} of MACs"
    return f"{percent(own['weights'])} of weights" if own.get("weights") is not None else "none"


def rows_for(name: str, run: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Rows of one model: one per artifact when the build wrote a manifest, else one row with the exit code."""
    build = out / name / "build"
    manifest_path = build / "manifest.json"
    if not manifest_path.is_file():
        return [
            {
                "model": name,
                "target": "—",
                "precision": "—",
                "gate": f"exit {run.get('exit_code')}",
                "reason": run.get("error", ""),
                "metric": None,
                "metric_ref": None,
                "drift": None,
                "bytes": None,
                "latency_ratio": None,
                "latency_ms": None,
                "int8_coverage": "—",
            }
        ]
    manifest = json.loads(manifest_path.read_text())
    timings = json.loads((build / "timings.json").read_text()) if (build / "timings.json").is_file() else {}
    latency = {k: (v or {}).get("latency_ms_batch1") for k, v in timings.get("artifacts", {}).items()}
    rows = []
    for art in manifest["artifacts"]:
        label = f"{art['target']}/{art['precision']}"
        metrics, gate = art.get("metrics") or {}, art.get("gate") or {}
        ms, fp32_ms = latency.get(label), latency.get(f"{art['target']}/fp32")
        proxy = "proxy" in (art.get("runtime") or "")  # a stand-in runtime's milliseconds say nothing of the target
        rows.append(
            {
                "model": name,
                "target": art["target"],
                "precision": art["precision"],
                "gate": gate.get("status", "?"),
                "reason": gate.get("reason", ""),
                "metric": metrics.get("metric"),
                "metric_ref": metrics.get("metric_ref"),
                "drift": metrics.get("drift"),
                "bytes": art.get("bytes"),
                "latency_ms": None if proxy else ms,
                "latency_ratio": ms / fp32_ms if ms and fp32_ms and not proxy else None,
                "runtime": art.get("runtime") or "",
                "int8_coverage": int8_coverage(art),
            }
        )
    return rows


def _num(v: Any, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _latency(r: dict[str, Any]) -> str:
    if "proxy" in r.get("runtime", ""):
        return f"— (validated on {r['runtime']}: no target latency)"
    return _num(r["latency_ms"], ".3f")


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def render(models: list[dict[str, Any]], rows: list[dict[str, Any]], commands: list[str]) -> str:
    lines = (
        ["# deployc model zoo", "", "Command(s), in order:", ""]
        + [f"    {c}" for c in commands]
        + [
            "",
            "## Models",
            "",
            "| model | wheel | source | architecture | metric | data | exit | wall s | error |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    )
    for m in models:
        error = (m.get("error") or "") if m.get("exit_code") not in (0, 3) else ""  # 3: built, a gate failed
        lines.append(
            f"| {m['name']} | {m['requirement']} | {m['source']} | {m['architecture']} | {m['metric']} | "
            f"{m['data_note']} | {m.get('exit_code', '—')} | {_num(m.get('seconds'), '.0f')} | "
            f"{error.replace('|', '/')[:160]} |"
        )
    lines += [
        "",
        "## Artifacts",
        "",
        "Latency ratio: batch-1 latency / the same target's fp32 (timings.json). int8 coverage: deployc's "
        "share of multiply-accumulates (weights when shapes are unknown) that run in int8 (details.int8_coverage).",
        "",
        "| model | target | precision | gate | metric (ref) | drift | size | latency ms | ratio to fp32 | int8 coverage |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gate = r["gate"] if r["gate"] != "fail" else f"**fail** ({r['reason']})"
        if r["gate"].startswith("exit"):
            gate = f"**{r['gate']}**"
        if r["gate"] == "skipped":
            gate = f"skipped ({r['reason'][:60]})"
        metric = "—" if r["metric"] is None else f"{r['metric']:.4f} ({r['metric_ref']:.4f})"
        lines.append(
            f"| {r['model']} | {r['target']} | {r['precision']} | {gate} | {metric} | "
            f"{_num(r['drift'], '+.4f')} | {_size(r['bytes'])} | {_latency(r)} | "
            f"{_num(r['latency_ratio'], '.2f')} | {r['int8_coverage']} |"
        )
    return "\n".join(lines) + "\n"
