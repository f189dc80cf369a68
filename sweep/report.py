"""DIR/report.html (variants, every artifact, Pareto plots with the chosen artifact starred) and DIR/junit.xml
(one testcase per variant) of a sweep, from what sweep.json holds."""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from deployc.core.config import metric_label
from deployc.outputs.plots import pareto_front, scatter_png
from deployc.outputs.report import human_bytes
from deployc.outputs.report_html import html_figure, html_page, html_table
from deployc.storage.files import write_text_atomic


def _label(a: dict[str, Any]) -> str:
    return f"{a['variant']} {a['target']}/{a['precision']}"


def _metric_name(ref: dict[str, Any]) -> str:
    """'top1', or a custom metric's callable name without its file path (an axis label)."""
    return metric_label(ref["metric"])


def _plots(summary: dict[str, Any]) -> str:
    ref = summary["reference"] or {"metric": "metric", "higher_is_better": True}
    hib = bool(ref["higher_is_better"])
    pts = [
        {
            **a,
            "variant": v["id"],
            "label": f"{v['id']} {a['target']}/{a['precision']}",
            "status": "pass" if a["gate"] == "pass" else "fail",
            "kb": None if a["bytes"] is None else a["bytes"] / 1024,
        }
        for v in summary["variants"]
        for a in v["artifacts"]
        if a["metric"] is not None
    ]
    if not pts:
        return "<p class=meta>No artifact was validated, so there is nothing to plot.</p>"
    chosen = summary["chosen"]
    star = next((p for p in pts if chosen and _label(p) == _label(chosen)), None)
    figs = []
    for cost, xlabel in (("latency_ms", "batch-1 latency (ms)"), ("kb", "size (KB)")):
        front = pareto_front([p for p in pts if p["status"] == "pass"], cost, hib)
        png = scatter_png(pts, cost, xlabel, _metric_name(ref), hib, front=front, chosen=star, label_all=False)
        figs.append(html_figure(png, f"{_metric_name(ref)} vs {xlabel}"))
    return f"<div class=plots>{''.join(figs)}</div>"


def render_sweep_html(summary: dict[str, Any]) -> str:
    e = html.escape
    ex, counts, ref = summary["executor"], summary["counts"], summary["reference"]
    chosen = summary["chosen"]
    obj = summary["objective"]
    goal = f"minimise {obj['minimize']}" + (f" of {obj['artifact']}" if obj["artifact"] else "")
    goal += " where every gate of the variant passes" if obj["subject_to"] == "all_gates" else " where its gate passes"
    head = (
        f"<h1>deployc sweep: {e(summary['name'])}</h1>"
        f"<p class=meta>{counts['variants']} variants: {counts['passed']} passed, {counts['failed']} failed"
        f" ({counts['resumed']} resumed) in {summary['wall_seconds']:.1f} s on Ray {e(str(ex['version']))}"
        f" ({ex['nodes']} node(s), {ex['cpus']:g} CPUs, {e(str(ex['address']))})</p>"
        f"<p class=meta>Objective: {e(goal)}. Chosen: "
        + (
            f"<b>{e(_label(chosen))}</b> ({obj['minimize']} = {chosen[obj['minimize']]:.4g})"
            if chosen
            else "none (no artifact qualifies)"
        )
        + "</p>"
        + (f"<p class=meta>Reference ({e(ref['source'])}): {e(ref['metric'])} = {ref['value']:.4f}</p>" if ref else "")
    )
    metric = _metric_name(ref) if ref else "metric"
    front = {_label(a) for a in summary["pareto"]}
    rows = []
    for v in summary["variants"]:
        link = f'<a href="{e(v["out"])}/report.html">{e(v["id"])}</a>' if v["exit_code"] in (0, 3) else e(v["id"])
        overrides = ", ".join(f"{k}={json.dumps(val)}" for k, val in v["overrides"].items())
        status = f'<span class="{"pass" if v["status"] == "passed" else "fail"}">{e(v["status"])}</span>'
        rows.append([link, e(overrides), status, f'<span class="reason">{e(v["reason"] or "")}</span>'])
    variants = html_table(["variant", "overrides", "status", "why"], rows, left=(0, 1, 2, 3), raw=True)
    arts = []
    for v in summary["variants"]:
        for a in v["artifacts"]:
            label = _label({"variant": v["id"], **a})
            mark = "★ chosen" if chosen and label == _label(chosen) else ("Pareto" if label in front else "")
            arts.append(
                [
                    v["id"],
                    f"{a['target']}/{a['precision']}",
                    human_bytes(a["bytes"]),
                    "—" if a["metric"] is None else f"{a['metric']:.4f}",
                    "—" if a["drift"] is None else f"{a['drift'] * 100:+.2f}%",
                    "—" if a["latency_ms"] is None else f"{a['latency_ms']:.3f}",
                    a["gate"] or "—",
                    mark,
                ]
            )
    header = ["variant", "artifact", "size", metric, "drift", "ms (batch 1)", "gate", ""]
    body = (
        head + "<h2>Accuracy vs cost</h2><p class=meta>Green: passed its gate; red: did not. Ringed and dashed: the "
        "Pareto front of the passing artifacts; the star is the chosen one.</p>"
        + _plots(summary)
        + "<h2>Variants</h2>"
        + variants
        + "<h2>Artifacts</h2>"
        + html_table(header, arts, left=(0, 1, 6, 7))
    )
    if summary["prefixes"]:
        prefix_rows = [
            [p["pipeline"], ", ".join(p["variants"]), p["status"], p["seconds"], p.get("error") or ""]
            for p in summary["prefixes"]
        ]
        body += "<h2>Shared prefixes (run once each)</h2>" + html_table(
            ["passes", "variants", "status", "seconds", "error"], prefix_rows, left=(0, 1, 2, 4)
        )
    return html_page(f"deployc sweep: {summary['name']}", body)


def render_sweep_junit(summary: dict[str, Any]) -> str:
    """<testsuite name="deployc.sweep.NAME"> with one <testcase> per variant; a failed gate is a <failure>,
    a build that could not finish (error, dead worker) an <error>."""
    variants = summary["variants"]
    gate_failed = [v for v in variants if v["exit_code"] == 3]
    errors = [v for v in variants if v["status"] == "failed" and v["exit_code"] != 3]
    counts = {"tests": str(len(variants)), "failures": str(len(gate_failed)), "errors": str(len(errors))}
    seconds = f"{summary['wall_seconds']:.3f}"
    root = ET.Element("testsuites", name="deployc.sweep", time=seconds, **counts)
    suite = ET.SubElement(root, "testsuite", name=f"deployc.sweep.{summary['name']}", time=seconds, **counts)
    for v in variants:
        case = ET.SubElement(
            suite, "testcase", classname=f"deployc.sweep.{summary['name']}", name=v["id"], time=f"{v['seconds']:.3f}"
        )
        if v["exit_code"] == 3:
            ET.SubElement(case, "failure", message=v["reason"] or "a gate failed", type="GateFailed")
        elif v["status"] == "failed":
            ET.SubElement(case, "error", message=v["reason"] or "the build did not finish", type="BuildError")
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join([f"{k}: {json.dumps(val)}" for k, val in v["overrides"].items()] + [f"out: {v['out']}"])
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_sweep_reports(summary: dict[str, Any], out_dir: Path) -> None:
    write_text_atomic(out_dir / "report.html", render_sweep_html(summary))
    write_text_atomic(out_dir / "junit.xml", render_sweep_junit(summary))
