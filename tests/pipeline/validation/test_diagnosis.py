"""Issue 24: the build blames the stage where the accuracy goes. A torch-level pass that destroys the model is named
as soon as it ran; int8 remedies are not tried on a loss that comes before quantization; the reports open with it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from deployc.compiler.contracts import Artifact
from deployc.compiler.instruments import Instruments
from deployc.compiler.stage_check import RECORD_KEY, upstream_loss
from deployc.core.config import ValidateConfig, load_config
from deployc.core.state import PassRecord
from deployc.driver.build import build, run_prefix
from deployc.validation.diagnosis import diagnose
from deployc.validation.remedies import loss_before_quantization
from tests.conftest import digits_config

PRUNE_ALL = [{"prune.structured": {"ratio": 0.9, "max_layer_ratio": 0.95, "measure_onnx": False}}]


@pytest.fixture(scope="module")
def pruned_build(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("pruned") / "out"
    config = load_config(digits_config(passes=PRUNE_ALL, targets={"onnx": {"precision": ["fp32", "int8"]}}))
    log = io.StringIO()
    result = build(config, out=out, instruments=Instruments(stream=log))
    return config, result, log.getvalue()


def _art(result, precision: str) -> dict:
    return next(a for a in result.manifest["artifacts"] if a["precision"] == precision)


def test_destructive_pruning_is_blamed_not_int8(pruned_build):
    """Example 7: prune.structured took top1 0.99 -> ~0.1 with no word, the fp32 artifact failed, yet 8 int8 remedy
    trials ran and the report said 'closest of 8 remedy trials'."""
    _, result, log = pruned_build
    assert result.exit_code == 3
    check = result.manifest["passes"][0]["metrics"][RECORD_KEY]
    assert check["over_budget"] and check["reference"] > 0.95 and check["value"] < 0.5 and check["samples"] == 256
    assert "warning: after pass 'prune.structured' the model scores top1 0." in log
    assert "this pass loses the accuracy, before any export or quantization" in log
    int8 = _art(result, "int8")
    assert int8["gate"]["status"] == "fail" and "remedies" not in int8.get("details", {})
    assert "the loss comes before quantization: pass 'prune.structured' lost it (top1 0.9" in int8["gate"]["reason"]
    assert "int8 remedies not tried" in int8["gate"]["reason"]
    assert result.manifest["diagnosis"].startswith(
        "accuracy lost before export and quantization: pass 'prune.structured' lost it"
    )


def test_reports_open_with_the_diagnosis(pruned_build):
    _, result, _ = pruned_build
    md = (result.out_dir / "report.md").read_text().splitlines()
    assert md[0] == "# deployc build: digits" and md[2].startswith("**Diagnosis:** accuracy lost before export")
    html = (result.out_dir / "report.html").read_text()
    assert html.index("<strong>Diagnosis:</strong> accuracy lost before export") < html.index("Pipeline:")


def test_explain_says_the_loss_is_before_quantization(pruned_build):
    """explain showed per-layer errors <=0.6% beside '+75% drift' without a word on where the loss was."""
    from deployc.commands.explain import explain

    _, result, _ = pruned_build
    lines = explain(result.out_dir, samples=16).splitlines()
    assert lines[1].startswith("int8 artifact drift: +")
    assert (
        lines[2].startswith("NOTE: the fp32 artifact already drifts +")
        and "the loss comes before quantization" in lines[2]
    )


def test_a_sweep_prefix_carries_the_blame(pruned_build, tmp_path: Path):
    """Own case: in a sweep the pruning runs once in a shared prefix; each variant's build must still blame it."""
    config, result, _ = pruned_build
    prefix = run_prefix(config, 1)
    again = build(config, out=tmp_path / "variant", quiet=True, start=prefix)
    assert again.manifest["diagnosis"] == result.manifest["diagnosis"]
    assert "remedies" not in _art(again, "int8").get("details", {})


def _record(name: str, drift: float, budget: float = 0.01) -> PassRecord:
    check = {
        "metric": "top1",
        "value": 0.98 - drift,
        "reference": 0.98,
        "drift": drift,
        "samples": 256,
        "budget": budget,
        "over_budget": drift > budget,
    }
    return PassRecord(name, {}, True, {RECORD_KEY: check})


def test_upstream_blames_the_pass_that_lost_it_and_kept_it_lost():
    """Own cases: a pruning recovered by fine-tuning is not blamed; the first pass after which it stays lost is."""
    assert upstream_loss((_record("prune.structured", 0.4), _record("finetune", 0.005))) is None
    blamed = upstream_loss((_record("distill", 0.0), _record("prune.structured", 0.4), _record("finetune", 0.3)))
    assert blamed.startswith("pass 'prune.structured' lost it (top1 0.9800 -> 0.5800 on 256 validation samples;")
    assert "after the last torch pass: drift +0.3" in blamed


def _artifact(precision: str, status: str, drift: float) -> Artifact:
    art = Artifact("onnx", precision, None, "onnxruntime", "")
    art.gate, art.metrics = {"status": status, "reason": "r"}, {"drift": drift}
    return art


def test_int8_remedies_skipped_when_fp32_already_fails():
    """Own case: no torch pass at all, the fp32 artifact fails (lowering lost it): remedies on int8 cannot help."""
    rules = ValidateConfig(max_drift=0.01)
    fp32, int8 = _artifact("fp32", "fail", 0.2), _artifact("int8", "fail", 0.25)
    assert loss_before_quantization(int8, [fp32], None, rules) == (
        "the loss comes before quantization: onnx/fp32 already fails (drift +0.2); int8 remedies not tried"
    )
    assert loss_before_quantization(int8, [_artifact("fp32", "pass", 0.0)], None, rules) is None
    assert diagnose([fp32, int8], None, rules).startswith("accuracy lost in lowering, before quantization: onnx/fp32")
    assert diagnose([_artifact("fp32", "pass", 0.0), int8], None, rules).startswith(
        "accuracy lost in quantization: onnx/int8 (drift +0.25)"
    )
    assert diagnose([_artifact("fp32", "pass", 0.0)], None, rules) is None
