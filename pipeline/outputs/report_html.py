"""report.html: the build report a person opens in a browser — one self-contained file (plots are
base64 PNGs), with the artifact table, accuracy-vs-cost plots with their Pareto front and the drift budget,
per-layer sensitivity when tuning measured it, and every table the passes produced. It needs no font beyond
the browser's default: gate icons are inline SVG, not emoji; plot labels are placed so none overlaps another."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from deployc.core.config import metric_label
from deployc.outputs.plots import budget_of, scatter_png, sensitivity_chart
from deployc.outputs.report import (
    NPU_HEADER,
    budget_text,
    drift_text,
    gate_text,
    human_bytes,
    int8_text,
    latency_text,
    npu_rows,
    proxy_note,
    proxy_of,
)
from deployc.storage.files import read_json, write_text_atomic

_FORMATS = {".onnx": "ONNX", ".tflite": "TFLite", ".engine": "TensorRT engine", ".plan": "TensorRT engine"}
_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;max-width:1360px;margin:2rem auto;padding:0 1.5rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
code{background:#f6f8fa;padding:.1rem .3rem;border-radius:4px;font-size:.9em;word-break:break-all}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:.35rem .5rem;text-align:right;vertical-align:top;white-space:nowrap}
td.w,th.w{white-space:normal;min-width:7rem;max-width:40rem;overflow-wrap:break-word;text-align:left}
td.w:last-child{min-width:14rem}
.icon{display:inline-block;width:.95em;height:.95em;vertical-align:-.12em;margin-right:.3em}
.scroll{overflow-x:auto;max-width:100%}
th{background:#f6f8fa;white-space:normal}td.l,th.l{text-align:left}tr:nth-child(even) td{background:#fbfcfd}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;font-weight:600;color:#fff}
.passed{background:#1a7f37}.failed{background:#cf222e}
.pass{color:#1a7f37}.fail{color:#cf222e;font-weight:600}.skipped{color:#6e7781}
.meta{color:#57606a;margin:.2rem 0}.plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots figure{margin:0;flex:1 1 480px}.plots img{width:100%;border:1px solid #d0d7de;border-radius:6px}
figcaption{color:#57606a;font-size:.85rem}.reason{color:#57606a;font-size:.85rem;text-align:left}
.error{color:#9a6700;font-weight:600}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def html_table(
    header: list[str],
    rows: list[list[Any]],
    left: tuple[int, ...] = (0,),
    raw: bool = False,
    wrap: tuple[int, ...] = (),
) -> str:
    """An HTML table; columns in `left` are left-aligned (names, text), the rest right (numbers); columns in `wrap`
    (long text: reasons, metrics) wrap instead of widening the table past the page."""
    width = max([len(header)] + [len(r) for r in rows])
    cls = [' class="w"' if i in wrap else ' class="l"' if i in left else "" for i in range(width)]
    head = "".join(f"<th{cls[i]}>{_e(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls[i]}>{c if raw else _e(_fmt(c))}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def artifact_format(artifact: dict[str, Any]) -> str:
    path = artifact.get("path") or ""
    return _FORMATS.get(Path(path).suffix, artifact.get("runtime") or "—")


def points(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Artifacts that ran: label, metric, batch-1 ms and bytes (what the plots show). A proxy's latency (TensorRT
    validated on onnxruntime) is not the artifact's: its `ms` is None, so it stays off the latency axis."""
    out = []
    for a in manifest["artifacts"]:
        m, perf = a.get("metrics") or {}, a.get("perf") or {}
        if "metric" in m:
            out.append(
                {
                    "label": f"{a['target']}/{a['precision']}",
                    "metric": m["metric"],
                    "ms": None if proxy_of(a) else perf.get("latency_ms_batch1"),
                    "proxy": proxy_of(a),
                    "bytes": a.get("bytes"),
                    "status": (a.get("gate") or {}).get("status"),
                }
            )
    return out


def html_figure(b64: str | None, caption: str) -> str:
    if b64 is None:
        return ""
    return f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{b64}"><figcaption>{_e(caption)}</figcaption></figure>'


# gate icons drawn inline (no font needed): a tick, a cross, an open circle, a warning triangle
_ICON_PATHS = {
    "pass": '<circle cx="8" cy="8" r="7.5" fill="#1a7f37"/><path d="M4.5 8.3l2.3 2.3 4.7-4.9" fill="none" '
    'stroke="#fff" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/>',
    "fail": '<circle cx="8" cy="8" r="7.5" fill="#cf222e"/><path d="M5.3 5.3l5.4 5.4M10.7 5.3l-5.4 5.4" '
    'stroke="#fff" stroke-width="1.8" stroke-linecap="round"/>',
    "skipped": '<circle cx="8" cy="8" r="6.6" fill="none" stroke="#6e7781" stroke-width="1.8"/>'
    '<path d="M5 8h6" stroke="#6e7781" stroke-width="1.8" stroke-linecap="round"/>',
    "error": '<path d="M8 1.2L15.2 14.5H.8z" fill="#bf8700"/><path d="M8 5.8v4" stroke="#fff" stroke-width="1.7" '
    'stroke-linecap="round"/><circle cx="8" cy="12.3" r="1" fill="#fff"/>',
}


def gate_icon(status: str) -> str:
    """An inline SVG icon for a gate status ('' for an unknown one)."""
    path = _ICON_PATHS.get(status)
    return f'<svg class="icon" viewBox="0 0 16 16" aria-hidden="true">{path}</svg>' if path else ""


def _artifact_section(manifest: dict[str, Any]) -> str:
    metric = manifest["reference"]["metric"]
    rows = []
    for a in manifest["artifacts"]:
        m, gate = a.get("metrics") or {}, a.get("gate") or {}
        status = gate.get("status", "")
        text = gate_text(gate, a.get("runtime"), a.get("details") or {})
        rows.append(
            [
                _e(a["target"]),
                _e(artifact_format(a)),
                _e(a["precision"]),
                _e(human_bytes(a.get("bytes"))),
                f"{m['metric']:.4f}" if isinstance(m.get("metric"), (int, float)) else "—",
                _e(int8_text(a)),
                _e(drift_text(m, metric)),
                _e(latency_text(a)),
                f'<span class="{_e(status)}">{gate_icon(status)}{_e(text)}</span>',
                f'<span class="reason">{_e(gate.get("reason", ""))}{_e(proxy_note(a))}</span>',
            ]
        )
    header = ["target", "format", "precision", "size", metric, "int8", "drift", "ms (batch 1)", "gate", "why"]
    return "<h2>Artifacts</h2>" + html_table(header, rows, left=(0, 2), raw=True, wrap=(1, 8, 9))


def _plots_section(manifest: dict[str, Any]) -> str:
    ref = manifest["reference"]
    pts = points(manifest)
    if not pts:
        return "<h2>Accuracy vs cost</h2><p class=meta>No artifact ran here, so there is nothing to plot.</p>"
    hib = ref.get("higher_is_better", True)
    label = metric_label(ref["metric"])
    largest = max((p["bytes"] or 0) for p in pts)
    unit, scale = ("MB", 2**20) if largest >= 2**20 else ("KB", 2**10)
    for p in pts:
        p["size"] = None if p["bytes"] is None else p["bytes"] / scale
    budget = budget_of(manifest)
    figs = [
        html_figure(scatter_png(pts, "ms", "batch-1 latency (ms)", label, hib, budget=budget), f"{label} vs latency"),
        html_figure(scatter_png(pts, "size", f"size ({unit})", label, hib, budget=budget), f"{label} vs size"),
    ]
    note = (
        "Ringed and dashed blue: the Pareto front — artifacts no other artifact beats on both cost and "
        f"{_e(ref['metric'])}. Green passed its gate, red failed."
    )
    if budget is not None:
        note += f" Dashed red line: the {_e(budget.text)} (an artifact beyond it fails); dotted grey: the reference."
    proxies = [p for p in pts if p["proxy"]]
    if proxies:
        shown = ", ".join(f"{_e(p['label'])} (measured on {_e(p['proxy'])})" for p in proxies)
        note += f" Not on the latency plot: {shown} — a proxy's latency is not the target's."
    return f"<h2>Accuracy vs cost</h2><p class=meta>{note}</p><div class=plots>{''.join(figs)}</div>"


def _npu_section(manifest: dict[str, Any]) -> str:
    rows = npu_rows(manifest)
    if not rows:
        return ""
    note = (
        "Estimates from Arm's Vela compiler with its default system configuration for each accelerator; a SoC's own "
        "vela.ini changes time and memory, not which ops run on the NPU."
    )
    return f"<h2>NPU placement (Vela)</h2><p class=meta>{note}</p>" + html_table(NPU_HEADER, rows, left=(0, 1, 2, 7))


def _sensitivity_section(manifest: dict[str, Any]) -> str:
    parts = []
    for p in manifest.get("all_passes", manifest["passes"]):
        rows = [r for r in (p.get("metrics") or {}).get("sensitivity") or [] if "layer" in r and "error" in r]
        if rows:
            chart = sensitivity_chart(rows, f"pass {p['name']}: {len(rows)} layers")
            parts.append(html_figure(chart, f"per-layer sensitivity measured by {p['name']}"))
    return "<h2>Per-layer sensitivity</h2>" + "".join(parts) if parts else ""


def _tables_section(manifest: dict[str, Any], extra_tables: list[dict[str, Any]]) -> str:
    tables = [t for p in manifest.get("all_passes", manifest["passes"]) for t in p.get("tables", [])]
    return "".join(
        f"<h2>{_e(t['title'])}</h2>" + html_table(list(t["header"]), [list(r) for r in t["rows"]], wrap=(0,))
        for t in tables + list(extra_tables)
    )


def _passes_section(manifest: dict[str, Any]) -> str:
    passes = manifest.get("all_passes", manifest["passes"])
    if not passes:
        return ""
    rows = [
        [
            p["name"],
            p.get("scope", "pipeline"),
            "yes" if p["modified"] else "no",
            "—" if p.get("seconds") is None else p["seconds"],
            ", ".join(f"{k}={_fmt(v)}" for k, v in (p.get("metrics") or {}).items() if not isinstance(v, (dict, list))),
        ]
        for p in passes
    ]
    header = ["pass", "for", "modified", "seconds", "metrics"]
    return "<h2>Passes</h2>" + html_table(header, rows, left=(0, 1, 2), wrap=(4,))


def render_html(manifest: dict[str, Any], extra_tables: list[dict[str, Any]] | None = None) -> str:
    """The whole report as one HTML string from the report view (manifest + timings, see report.report_view);
    extra_tables ({title, header, rows}) are appended (e.g. the bench table)."""
    ref = manifest["reference"]
    status = manifest["status"]
    total = (manifest.get("timings") or {}).get("total_seconds")
    head = (
        f"<h1>deployc build: {_e(manifest['name'])} <span class='badge {_e(status)}'>{_e(status)}</span></h1>"
        + (f"<p><strong>Diagnosis:</strong> {_e(manifest['diagnosis'])}</p>" if manifest.get("diagnosis") else "")
        + f"<p class=meta>{_e(budget_text(manifest).capitalize())}"
        + (f" · built in {total:.1f} s" if total is not None else "")
        + "</p>"
        f"<p class=meta>Pipeline: <code>{_e(manifest['pipeline'])}</code></p>"
        f"<p class=meta>Reference ({_e(ref['source'])}): {_e(ref['metric'])} = {ref['value']:.4f} on "
        f"{ref['samples']} samples (the model as loaded, before any pass)</p>"
    )
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    body = (
        head
        + _artifact_section(manifest)
        + _npu_section(manifest)
        + _plots_section(manifest)
        + _sensitivity_section(manifest)
        + _passes_section(manifest)
        + _tables_section(manifest, extra_tables or [])
        + f"<h2>Versions</h2><p class=meta>{_e(versions)}</p>"
    )
    return html_page(f"deployc: {manifest['name']}", body)


def html_page(title: str, body: str) -> str:
    """A self-contained page with the reports' style around `body` (HTML)."""
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def write_html_report(
    manifest: dict[str, Any],
    out_dir: str | Path,
    timings: dict[str, Any] | None = None,
    extra_tables: list[dict[str, Any]] | None = None,
) -> Path:
    """Write OUT/report.html (temp file + rename, like manifest.json) and return its path.

    Latencies and wall times live in timings.json, apart from the deterministic manifest; when
    `timings` is not given they are read from OUT/timings.json if it exists.
    """
    from deployc.outputs.report import report_view

    timings_path = Path(out_dir) / "timings.json"
    if timings is None and timings_path.is_file():
        timings = read_json(timings_path, str(timings_path))
    if timings is not None:
        manifest = report_view(manifest, timings)
    return write_text_atomic(Path(out_dir) / "report.html", render_html(manifest, extra_tables))
