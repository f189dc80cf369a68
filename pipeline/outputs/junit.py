"""junit.xml: one testcase per artifact gate, so CI systems show deployc's gates like test results."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from deployc.core.config import metric_label
from deployc.outputs.report import PERCENT_METRICS
from deployc.storage.files import write_text_atomic
from deployc.validation.gates import proxy_runtime


def _drift_message(artifact: dict[str, Any], metric: str, budget: float) -> str:
    """'top1 drift +3.00% exceeds budget 1.00%' — what a CI failure line should say (drift in the metric's units)."""
    m, gate = artifact.get("metrics") or {}, artifact.get("gate") or {}
    drift = m.get("drift")
    reason = gate.get("reason") or "validation gate failed"
    if not (isinstance(drift, (int, float)) and math.isfinite(drift)) or "exceeds budget" not in reason:
        return reason
    metric = metric_label(metric)
    if metric in PERCENT_METRICS:
        return f"{metric} drift {drift * 100:+.2f}% exceeds budget {budget * 100:.2f}%"
    return f"{metric} drift {drift:+.4g} exceeds budget {budget:g} ({metric} units)"


def _cases(a: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(testcase name, gate) pairs: one per artifact, two for a proxy-validated one (its accuracy on the proxy
    runtime, and the engine as skipped with the reason it was not built)."""
    label, gate = f"{a['target']}/{a['precision']}", a.get("gate") or {}
    details = a.get("details") or {}
    proxy = proxy_runtime(a.get("runtime"), details)
    if not proxy:
        return [(label, gate)]
    engine = {"status": "skipped", "reason": f"engine {details['engine']}"}
    return [(f"{label} (proxy: {proxy})", gate), (f"{label} engine", engine)]


def junit_tree(manifest: dict[str, Any], timings: dict[str, Any] | None = None) -> ET.ElementTree:
    """<testsuites><testsuite name="deployc.NAME"> with a <testcase name="target/precision"> per artifact;
    `timings` (timings.json) gives the suite its wall time."""
    metric = manifest["reference"]["metric"]
    budget = manifest["budget"]["max_drift"]
    cases = [(a, name, gate) for a in manifest["artifacts"] for name, gate in _cases(a)]
    statuses = [gate.get("status") for _, _, gate in cases]
    counts = {
        "tests": str(len(cases)),
        "failures": str(statuses.count("fail")),
        "errors": str(sum(s not in ("pass", "fail", "skipped") for s in statuses)),
        "skipped": str(statuses.count("skipped")),
    }
    seconds = f"{(timings or manifest.get('timings') or {}).get('total_seconds', 0.0):.3f}"
    root = ET.Element("testsuites", name="deployc", time=seconds, **counts)
    suite = ET.SubElement(root, "testsuite", name=f"deployc.{manifest['name']}", time=seconds, **counts)
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("pipeline", manifest["pipeline"]),
        ("reference", f"{metric}={manifest['reference']['value']:.6g}"),
        ("max_drift", f"{budget:g}"),
    ):
        ET.SubElement(props, "property", name=key, value=str(value))
    for (a, name, gate), status in zip(cases, statuses):
        m = a.get("metrics") or {}
        case = ET.SubElement(
            suite, "testcase", classname=f"deployc.{manifest['name']}.{a['target']}", name=name, time="0"
        )
        if status == "fail":
            failure = ET.SubElement(case, "failure", message=_drift_message(a, metric, budget), type="DriftExceeded")
            failure.text = gate.get("reason", "")
        elif status == "skipped":
            ET.SubElement(case, "skipped", message=gate.get("reason") or "skipped")
        elif status == "error":  # the target could not make or run it: not a drift, an error
            ET.SubElement(case, "error", message=gate.get("reason") or "not built", type="NotBuilt")
        elif status != "pass":
            ET.SubElement(case, "error", message=f"no gate result (status {status!r})", type="NoGate")
        shown = {
            k: m[k]
            for k in ("metric_ref", "metric", "drift", "agreement", "max_abs_err", "cosine")
            if isinstance(m.get(k), (int, float)) and status != "skipped"
        }
        if shown or a.get("path"):
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join([f"path: {a.get('path')}"] + [f"{k}: {v:.6g}" for k, v in shown.items()])
    ET.indent(root)
    return ET.ElementTree(root)


def render_junit(manifest: dict[str, Any], timings: dict[str, Any] | None = None) -> str:
    return ET.tostring(junit_tree(manifest, timings).getroot(), encoding="unicode", xml_declaration=True) + "\n"


def write_junit(manifest: dict[str, Any], out_dir: str | Path, timings: dict[str, Any] | None = None) -> Path:
    """Write OUT/junit.xml (temp file + rename) and return its path."""
    return write_text_atomic(Path(out_dir) / "junit.xml", render_junit(manifest, timings))
