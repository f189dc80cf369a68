"""report.html: the build report a person opens in a browser — one self-contained file (plots are
base64 PNGs), with the artifact table, accuracy-vs-cost plots with their Pareto front, per-layer
sensitivity when tuning measured it, and every table the passes produced."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from deployc.core.config import metric_label
from deployc.outputs.report import budget_text, drift_text, gate_text, human_bytes, int8_text
from deployc.storage.files import read_json, write_text_atomic

_FORMATS = {".onnx": "ONNX", ".tflite": "TFLite", ".engine": "TensorRT engine", ".plan": "TensorRT engine"}
_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;max-width:1360px;margin:2rem auto;padding:0 1.5rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
code{background:#f6f8fa;padding:.1rem .3rem;border-radius:4px;font-size:.9em;word-break:break-all}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:.35rem .6rem;text-align:right;vertical-align:top;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}
th{background:#f6f8fa}td.l,th.l{text-align:left}tr:nth-child(even) td{background:#fbfcfd}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;font-weight:600;color:#fff}
.passed{background:#1a7f37}.failed{background:#cf222e}
.pass{color:#1a7f37}.fail{color:#cf222e;font-weight:600}.skipped{color:#6e7781}
.meta{color:#57606a;margin:.2rem 0}.plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots figure{margin:0;flex:1 1 480px}.plots img{width:100%;border:1px solid #d0d7de;border-radius:6px}
figcaption{color:#57606a;font-size:.85rem}.reason{color:#57606a;font-size:.85rem;text-align:left}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def html_table(header: list[str], rows: list[list[Any]], left: tuple[int, ...] = (0,), raw: bool = False) -> str:
    """An HTML table; columns in `left` are left-aligned (names, text), the rest right (numbers)."""
    cls = [' class="l"' if i in left else "" for i in range(max([len(header)] + [len(r) for r in rows]))]
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
    """Artifacts that ran: label, metric, batch-1 ms and bytes (what the plots show)."""
    out = []
    for a in manifest["artifacts"]:
        m, perf = a.get("metrics") or {}, a.get("perf") or {}
        if "metric" in m:
            out.append(
                {
                    "label": f"{a['target']}/{a['precision']}",
                    "metric": m["metric"],
                    "ms": perf.get("latency_ms_batch1"),
                    "bytes": a.get("bytes"),
                    "status": (a.get("gate") or {}).get("status"),
                }
            )
    return out


def pareto_front(
    pts: list[dict[str, Any]], cost: str | tuple[str, ...], higher_is_better: bool = True
) -> list[dict[str, Any]]:
    """Points no other point beats on every cost (lower) and the metric at once; sorted by the first cost."""
    costs = (cost,) if isinstance(cost, str) else tuple(cost)
    usable = [p for p in pts if all(p.get(c) is not None for c in costs)]
    sign = 1 if higher_is_better else -1

    def losses(p: dict[str, Any]) -> list[float]:  # every coordinate lower-is-better
        return [p[c] for c in costs] + [-sign * p["metric"]]

    def dominated(p: dict[str, Any]) -> bool:
        mine = losses(p)
        return any(
            all(a <= b for a, b in zip(theirs, mine)) and theirs != mine for theirs in (losses(q) for q in usable)
        )

    return sorted((p for p in usable if not dominated(p)), key=lambda p: p[costs[0]])


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def scatter_png(
    pts: list[dict[str, Any]],
    cost: str,
    xlabel: str,
    metric: str,
    higher_is_better: bool,
    front: list[dict[str, Any]] | None = None,
    chosen: dict[str, Any] | None = None,
    label_all: bool = True,
) -> str | None:
    """A base64 PNG of metric vs `cost`, green passed / red failed, the Pareto front (default: of every point)
    ringed, `chosen` starred. Every cluster of points is labelled, or (label_all=False) only the chosen one."""
    from matplotlib.figure import Figure  # Figure without pyplot: no global state, Agg canvas on savefig

    usable = [p for p in pts if p.get(cost) is not None]
    if not usable:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    colours = {"pass": "#1a7f37", "fail": "#cf222e"}
    for p in usable:
        ax.scatter(p[cost], p["metric"], s=60, color=colours.get(p["status"], "#6e7781"), zorder=3)
    groups = (
        _label_groups(usable, cost)
        if label_all
        else [(chosen[cost], chosen["metric"], chosen["label"])]
        if chosen and chosen.get(cost) is not None
        else []
    )
    xs = [g[0] for g in groups] if label_all else [p[cost] for p in usable]
    dx = (max(xs) - min(xs)) or 1.0
    for x, y, label in groups:
        # below when a close neighbour sits higher (its label goes above); left of points near the right edge
        below = any(abs(x2 - x) < 0.15 * dx and y2 > y for x2, y2, _ in groups)
        right_edge = x > min(xs) + 0.6 * dx
        ax.annotate(
            label,
            (x, y),
            textcoords="offset points",
            xytext=(-7 if right_edge else 7, -13 if below else 6),
            ha="right" if right_edge else "left",
            fontsize=8,
        )
    front = pareto_front(usable, cost, higher_is_better) if front is None else front
    ax.step(
        [p[cost] for p in front],
        [p["metric"] for p in front],
        where="post",
        color="#0969da",
        linestyle="--",
        linewidth=1.2,
        zorder=2,
    )
    ax.scatter(
        [p[cost] for p in front],
        [p["metric"] for p in front],
        s=180,
        facecolors="none",
        edgecolors="#0969da",
        linewidths=1.5,
        label="Pareto front",
        zorder=4,
    )  # ringed: visible even alone
    if chosen is not None and chosen.get(cost) is not None:
        ax.scatter([chosen[cost]], [chosen["metric"]], s=260, marker="*", color="#bf8700", label="chosen", zorder=5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.margins(x=0.25, y=0.15)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.ticklabel_format(axis="y", useOffset=False)  # plain metric values, not "1e-5 + 9.999e-1" offsets
    return _png(fig)


def _label_groups(pts: list[dict[str, Any]], cost: str) -> list[tuple[float, float, str]]:
    """One label per cluster of (nearly) coincident points, e.g. 'onnx/fp32, tflite/fp32'; sorted by cost."""
    xs, ys = [p[cost] for p in pts], [p["metric"] for p in pts]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: list[list[dict[str, Any]]] = []
    for p in sorted(pts, key=lambda p: p[cost]):
        near = next(
            (
                g
                for g in groups
                if abs(g[0][cost] - p[cost]) < 0.03 * dx and abs(g[0]["metric"] - p["metric"]) < 0.03 * dy
            ),
            None,
        )
        if near is None:
            groups.append([p])
        else:
            near.append(p)
    return [(g[0][cost], g[0]["metric"], ", ".join(p["label"] for p in g)) for g in groups]


def _sensitivity_chart(rows: list[dict[str, Any]], title: str) -> str:
    from matplotlib.figure import Figure

    rows = sorted(rows, key=lambda r: r["error"], reverse=True)[:30]  # the 30 most sensitive layers stay readable
    fig = Figure(figsize=(7.5, 0.8 + 0.28 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([str(r["layer"]) for r in rows][::-1], [r["error"] for r in rows][::-1], color="#0969da")
    ax.set_xlabel("error when only this layer is quantized")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def html_figure(b64: str | None, caption: str) -> str:
    if b64 is None:
        return ""
    return f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{b64}"><figcaption>{_e(caption)}</figcaption></figure>'


def _artifact_section(manifest: dict[str, Any]) -> str:
    metric = manifest["reference"]["metric"]
    rows = []
    for a in manifest["artifacts"]:
        m, gate, perf = a.get("metrics") or {}, a.get("gate") or {}, a.get("perf") or {}
        status = gate.get("status", "")
        ms = perf.get("latency_ms_batch1")
        rows.append(
            [
                _e(a["target"]),
                _e(artifact_format(a)),
                _e(a["precision"]),
                _e(human_bytes(a.get("bytes"))),
                f"{m['metric']:.4f}" if isinstance(m.get("metric"), (int, float)) else "—",
                _e(int8_text(a)),
                _e(drift_text(m, metric)),
                f"{ms:.3f}" if ms is not None else "—",
                f'<span class="{_e(status)}">{_e(gate_text(gate, a.get("runtime"), a.get("details") or {}, True))}</span>',
                f'<span class="reason">{_e(gate.get("reason", ""))}</span>',
            ]
        )
    header = ["target", "format", "precision", "size", metric, "int8", "drift", "ms (batch 1)", "gate", "why"]
    return "<h2>Artifacts</h2>" + html_table(header, rows, left=(0, 1, 2, 8, 9), raw=True)


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
    figs = [
        html_figure(scatter_png(pts, "ms", "batch-1 latency (ms)", label, hib), f"{label} vs latency"),
        html_figure(scatter_png(pts, "size", f"size ({unit})", label, hib), f"{label} vs size"),
    ]
    note = (
        "Ringed and dashed: the Pareto front — artifacts no other artifact beats on both cost and "
        f"{_e(ref['metric'])}. Green passed its gate, red failed."
    )
    return f"<h2>Accuracy vs cost</h2><p class=meta>{note}</p><div class=plots>{''.join(figs)}</div>"


def _sensitivity_section(manifest: dict[str, Any]) -> str:
    parts = []
    for p in manifest.get("all_passes", manifest["passes"]):
        rows = [r for r in (p.get("metrics") or {}).get("sensitivity") or [] if "layer" in r and "error" in r]
        if rows:
            chart = _sensitivity_chart(rows, f"pass {p['name']}: {len(rows)} layers")
            parts.append(html_figure(chart, f"per-layer sensitivity measured by {p['name']}"))
    return "<h2>Per-layer sensitivity</h2>" + "".join(parts) if parts else ""


def _tables_section(manifest: dict[str, Any], extra_tables: list[dict[str, Any]]) -> str:
    tables = [t for p in manifest.get("all_passes", manifest["passes"]) for t in p.get("tables", [])]
    return "".join(
        f"<h2>{_e(t['title'])}</h2>" + html_table(list(t["header"]), [list(r) for r in t["rows"]])
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
    return "<h2>Passes</h2>" + html_table(["pass", "for", "modified", "seconds", "metrics"], rows, left=(0, 1, 2, 4))


def render_html(manifest: dict[str, Any], extra_tables: list[dict[str, Any]] | None = None) -> str:
    """The whole report as one HTML string from the report view (manifest + timings, see report.report_view);
    extra_tables ({title, header, rows}) are appended (e.g. the bench table)."""
    ref = manifest["reference"]
    status = manifest["status"]
    total = (manifest.get("timings") or {}).get("total_seconds")
    head = (
        f"<h1>deployc build: {_e(manifest['name'])} <span class='badge {_e(status)}'>{_e(status)}</span></h1>"
        f"<p class=meta>{_e(budget_text(manifest).capitalize())}"
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
