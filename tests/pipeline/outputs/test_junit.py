"""junit.xml: one testcase per artifact gate; counts and messages as CI parsers read them."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET

from deployc.outputs.ci_summary import append_step_summary
from deployc.outputs.junit import write_junit


def _with_fail_and_skip(manifest):
    m = copy.deepcopy(manifest)
    bad = copy.deepcopy(m["artifacts"][1])
    bad.update(precision="fp16", gate={"status": "fail", "reason": "drift +0.0312 exceeds budget 0.0100"})
    bad["metrics"] = dict(bad["metrics"], drift=0.0312)
    skip = {
        "target": "tensorrt",
        "precision": "int8",
        "path": None,
        "metrics": {},
        "perf": {},
        "gate": {"status": "skipped", "reason": "TensorRT needs an NVIDIA GPU"},
    }
    m["artifacts"] += [bad, skip]
    return m


def test_passing_build_parses_with_one_testcase_per_artifact(demo_build, tmp_path):
    root = ET.parse(write_junit(demo_build.manifest, tmp_path)).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["onnx/fp32", "onnx/int8"]
    assert (root.get("tests"), root.get("failures"), root.get("skipped"), root.get("errors")) == ("2", "0", "0", "0")
    assert suite.get("tests") == "2"
    assert all(c.find("failure") is None and c.find("skipped") is None for c in cases)
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["pipeline"] == demo_build.manifest["pipeline"]


def test_failure_message_is_drift_vs_budget_and_skips_carry_reason(demo_build, tmp_path):
    m = _with_fail_and_skip(demo_build.manifest)
    root = ET.parse(write_junit(m, tmp_path)).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("4", "1", "1")
    failure = cases["onnx/fp16"].find("failure")
    assert failure.get("message") == "top1 drift +3.12% exceeds budget 1.00%"
    assert cases["tensorrt/int8"].find("skipped").get("message") == "TensorRT needs an NVIDIA GPU"
    # counts agree with the elements a CI parser would count
    assert len(list(root.iter("failure"))) == int(root.get("failures"))
    assert len(list(root.iter("skipped"))) == int(root.get("skipped"))


def test_non_finite_drift_falls_back_to_the_gate_reason(demo_build, tmp_path):
    m = copy.deepcopy(demo_build.manifest)
    m["artifacts"][0]["metrics"]["drift"] = float("nan")
    m["artifacts"][0]["gate"] = {"status": "fail", "reason": "metric is nan (non-finite outputs)"}
    failure = ET.parse(write_junit(m, tmp_path)).getroot().find(".//failure")
    assert failure.get("message") == "metric is nan (non-finite outputs)"


def test_step_summary_appends_report_md(demo_build, tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    report = demo_build.out_dir / "report.md"
    assert append_step_summary(report, {"GITHUB_STEP_SUMMARY": str(summary)}) == summary
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and text.endswith(report.read_text().rstrip("\n") + "\n")
    assert append_step_summary(report, {}) is None  # not on GitHub Actions: nothing written
