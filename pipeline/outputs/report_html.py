"""report.html: the build report a person opens in a browser — one self-contained file (plots are
base64 PNGs), with the artifact table, accuracy-vs-cost plots with their Pareto front and the drift budget,
per-layer sensitivity when tuning measured it, and every table the passes produced. It needs no font beyond
the browser's default: gate icons are inline SVG, not emoji; plot labels are placed so none overlaps another."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployc.core.config import metric_label
from deployc.outputs.report import (
    PERCENT_METRICS,
    budget_text,
    drift_text,
    gate_text,
    human_bytes,
    int8_text,
    latency_text,
    proxy_note,
    proxy_of,
)
from deployc.storage.files import write_text_atomic

_FORMATS = {".onnx": "ONNX", ".tflite": "TFLite", ".engine": "TensorRT engine", ".plan": "TensorRT engine"}
_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;max-width:1360px;margin:2rem auto;padding:0 1.5rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
code{background:#f6f8fa;padding:.1rem .3rem;border-radius:4px;font-size:.9em;word-break:break-all}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:.35rem .6rem;text-align:right;vertical-align:top;white-space:nowrap}
td.w,th.w{white-space:normal;min-width:7rem;max-width:40rem;overflow-wrap:break-word;text-align:left}
td.w:last-child{min-width:14rem}
.icon{display:inline-block;width:.95em;height:.95em;vertical-align:-.12em;margin-right:.3em}
.scroll{overflow-x:auto;max-width:100%}
th{background:#f6f8fa}td.l,th.l{text-align:left}tr:nth-child(even) td{background:#fbfcfd}
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


@dataclass(frozen=True)
class Budget:
    """The drift budget drawn on a plot: the reference metric and the worst metric that still passes."""

    reference: float
    limit: float
    text: str


def budget_of(manifest: dict[str, Any]) -> Budget | None:
    ref, budget = manifest["reference"], manifest.get("budget") or {}
    if not isinstance(ref.get("value"), (int, float)) or not isinstance(budget.get("max_drift"), (int, float)):
        return None
    sign = -1 if ref.get("higher_is_better", True) else 1
    limit = ref["value"] + sign * budget["max_drift"]
    shown = f"{budget['max_drift'] * 100:.2f}%" if ref["metric"] in PERCENT_METRICS else f"{budget['max_drift']:g}"
    return Budget(
        ref["value"],
        limit,
        f"drift budget {shown}: {metric_label(ref['metric'])} {'≥' if sign < 0 else '≤'} {limit:.4g}",
    )


def scatter_png(
    pts: list[dict[str, Any]],
    cost: str,
    xlabel: str,
    metric: str,
    higher_is_better: bool,
    front: list[dict[str, Any]] | None = None,
    chosen: dict[str, Any] | None = None,
    label_all: bool = True,
    budget: Budget | None = None,
) -> str | None:
    """A base64 PNG of scatter_figure(...), or None when no point has this cost."""
    drawn = scatter_figure(pts, cost, xlabel, metric, higher_is_better, front, chosen, label_all, budget)
    return None if drawn is None else _png(drawn[0])


def scatter_figure(
    pts: list[dict[str, Any]],
    cost: str,
    xlabel: str,
    metric: str,
    higher_is_better: bool,
    front: list[dict[str, Any]] | None = None,
    chosen: dict[str, Any] | None = None,
    label_all: bool = True,
    budget: Budget | None = None,
) -> tuple[Any, list[Any]] | None:
    """(Figure, label artists) of metric vs `cost`: green passed / red failed, the Pareto front (default: of every
    point) ringed, `chosen` starred, the drift budget and the reference as horizontal lines. Every cluster of
    points is labelled (or, label_all=False, only the chosen one), each label placed where it overlaps no other
    label, point or the legend (which sits below the axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # Figure without pyplot: no global state
    from matplotlib.ticker import MaxNLocator

    usable = [p for p in pts if p.get(cost) is not None]
    if not usable:
        return None
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = {"pass": "#1a7f37", "fail": "#cf222e"}
    for status, name in (("pass", "passed"), ("fail", "failed"), (None, "not validated")):
        group = [p for p in usable if (p["status"] if p["status"] in colours else None) == status]
        if group:
            ax.scatter(
                [p[cost] for p in group], [p["metric"] for p in group], s=60, zorder=3, label=name,
                color=colours.get(status, "#6e7781"),
            )  # fmt: skip
    front = pareto_front(usable, cost, higher_is_better) if front is None else front
    if front:
        ax.step([p[cost] for p in front], [p["metric"] for p in front], where="post", color="#0969da",
                linestyle="--", linewidth=1.2, zorder=2)  # fmt: skip
        ax.scatter([p[cost] for p in front], [p["metric"] for p in front], s=180, facecolors="none",
                   edgecolors="#0969da", linewidths=1.5, label="Pareto front", zorder=4)  # fmt: skip
    if chosen is not None and chosen.get(cost) is not None:
        ax.scatter([chosen[cost]], [chosen["metric"]], s=260, marker="*", color="#bf8700", label="chosen", zorder=5)
    ys = [p["metric"] for p in usable]
    if budget is not None:
        spread = max(ys) - min(ys)
        far = spread > 0 and min(abs(budget.limit - y) for y in ys) > 3 * spread  # it would squeeze every point
        ax.axhline(budget.reference, color="#57606a", linestyle=":", linewidth=1, label="reference (model as loaded)")
        ys.append(budget.reference)
        if far:
            ax.plot([], [], color="#cf222e", linestyle="--", linewidth=1.2, label=f"{budget.text} (off the plot)")
        else:
            ax.axhline(budget.limit, color="#cf222e", linestyle="--", linewidth=1.2, label=budget.text)
            ys.append(budget.limit)
    xs = [p[cost] for p in usable]
    if min(xs) > 0 and max(xs) / min(xs) > 30:  # costs spanning orders of magnitude: every point stays readable
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))
    span = (max(ys) - min(ys)) or abs(max(ys)) * 0.01 or 0.01
    ax.set_ylim(min(ys) - 0.18 * span, max(ys) + 0.18 * span)
    ax.margins(x=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis="y", useOffset=False)  # plain metric values, not "1e-5 + 9.999e-1" offsets
    fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    groups = (
        _label_groups(usable, cost)
        if label_all
        else [(chosen[cost], chosen["metric"], chosen["label"])]
        if chosen and chosen.get(cost) is not None
        else []
    )
    return fig, place_labels(fig, ax, groups, [(p[cost], p["metric"]) for p in usable])


# candidate offsets (points) around a point, nearest first: right, left, above, below, then the diagonals, farther
_RINGS = (8, 16, 28, 44, 64)
_ANGLES = ((1, 0.3), (-1, 0.3), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1), (1, -0.3), (-1, -0.3))


def place_labels(fig: Any, ax: Any, groups: list[tuple[float, float, str]], marks: list[tuple[float, float]]) -> list:
    """Annotate each (x, y, text) at the first offset where its box overlaps no placed label, no point and stays
    inside the axes; a label set away from its point gets a leader line. Returns the annotations."""
    fig.canvas.draw()  # fixes the constrained layout and the axis limits the boxes are measured against
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    for x, y in marks:
        cx, cy = ax.transData.transform((x, y))
        taken.append((cx - 9, cy - 9, cx + 9, cy + 9))  # a marker's footprint (s=60 is ~8 px across)
    placed = []
    for x, y, text in sorted(groups, key=lambda g: (g[0], -g[1])):
        ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(8, 3), fontsize=8, zorder=6)
        ann.set_in_layout(False)  # the layout is fixed; a label never moves the axes
        best, best_cost = None, None
        for ring in _RINGS:
            for dx, dy in _ANGLES:
                ann.xyann = (dx * ring, dy * ring)
                ann.set_ha("left" if dx > 0 else "right" if dx < 0 else "center")
                ann.set_va("bottom" if dy > 0 else "top" if dy < 0 else "center")
                b = ann.get_window_extent(renderer)
                box = (b.x0 - 2, b.y0 - 2, b.x1 + 2, b.y1 + 2)
                outside = b.x0 < frame.x0 or b.x1 > frame.x1 or b.y0 < frame.y0 or b.y1 > frame.y1
                cost = sum(_overlap(box, t) for t in taken) + (1e6 if outside else 0)
                if best_cost is None or cost < best_cost:
                    best, best_cost = (ann.xyann, ann.get_ha(), ann.get_va(), box), cost
                if cost == 0:
                    break
            if best_cost == 0:
                break
        offset, ha, va, box = best
        ann.remove()
        far = max(abs(offset[0]), abs(offset[1])) > _RINGS[0]  # set away from its point: a leader line shows whose
        ann = ax.annotate(
            text, (x, y), textcoords="offset points", xytext=offset, ha=ha, va=va, fontsize=8, zorder=6,
            arrowprops={"arrowstyle": "-", "color": "#8c959f", "linewidth": 0.7, "shrinkB": 5} if far else None,
        )  # fmt: skip
        ann.set_in_layout(False)
        taken.append(box)
        placed.append(ann)
    return placed


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


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
                if abs(g[0][cost] - p[cost]) < 0.01 * dx and abs(g[0]["metric"] - p["metric"]) < 0.01 * dy
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

    if timings is None and (Path(out_dir) / "timings.json").is_file():
        timings = json.loads((Path(out_dir) / "timings.json").read_text())
    if timings is not None:
        manifest = report_view(manifest, timings)
    return write_text_atomic(Path(out_dir) / "report.html", render_html(manifest, extra_tables))
