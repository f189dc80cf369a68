"""Accuracy-aware int8 tuning: trial order, stop-at-first-within-budget, fallback of the most sensitive
layers, and what the build records (examples/quant_tune.yaml on the quantization-hostile model)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from deployc.build import BuildResult, build
from deployc.config import TuneSpec
from deployc.data import Dataset, digits_arrays
from deployc.metrics import BUILTIN
from deployc.passes.onnx_util import op_counts
from deployc.passes.quantize import Int8Config
from deployc.passes.quantize_tune import tune_int8
from deployc.state import ModelState, TensorSpec
from deployc.validate import compute_reference

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quant_tune.yaml"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build(EXAMPLE, out=tmp_path_factory.mktemp("tune") / "out", quiet=True)


def _int8(result: BuildResult) -> dict:
    return next(a for a in result.manifest["artifacts"] if a["precision"] == "int8")


def _record(result: BuildResult) -> dict:
    return next(p for p in _int8(result)["passes"] if p["name"] == "quantize.tune")


def _float_weight_convs(proto: onnx.ModelProto) -> list[str]:
    inits = {i.name: i for i in proto.graph.initializer}
    return [
        n.name
        for n in proto.graph.node
        if n.op_type == "Conv" and n.input[1] in inits and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
    ]


def test_trials_run_in_order_and_stop_at_the_first_within_budget(tuned):
    log = _record(tuned)["metrics"]["trial_log"]
    stages = [t["stage"] for t in log]
    assert stages[:5] == ["as configured", "calibration", "calibration", "per_channel", "symmetry"]
    assert set(stages[5:]) == {"fallback"}
    assert [t["config"].split(",")[0] for t in log[:3]] == ["minmax", "entropy", "percentile"]
    assert "per-tensor" in log[3]["config"] and "symmetric" in log[4]["config"]
    assert all(t["drift"] > 0.5 for t in log[:-1])  # nothing short of fallback rescues the outlier channel
    assert log[-1]["drift"] <= 0.01 and tuned.exit_code == 0


def test_fallback_keeps_the_hostile_pair_in_fp32_and_fixes_drift(tuned):
    tuning = _int8(tuned)["details"]["tuning"]
    assert tuning["within_budget"] and len(tuning["fallback"]) == 2
    art = _int8(tuned)
    assert art["metrics"]["drift"] <= 0.01 and art["gate"]["status"] == "pass"
    proto = onnx.load(str(tuned.out_dir / art["path"]))
    assert sorted(_float_weight_convs(proto)) == sorted(tuning["fallback"])  # exactly those convs stay float
    counts = op_counts(proto)
    assert counts["Conv"] == 8 and counts["QuantizeLinear"] >= 6  # the rest of the model is still int8
    fallback_table = _record(tuned)["tables"][1]
    assert {row[0].split(" (")[1].rstrip(")") for row in fallback_table["rows"]} == {"spread", "squeeze"}


def test_sensitivity_is_reported_worst_first(tuned):
    metrics = _record(tuned)["metrics"]
    errors = [s["error"] for s in metrics["sensitivity"]]
    assert errors == sorted(errors, reverse=True) and len(errors) >= 10
    assert "digits:test" in metrics["tuned_on"]  # the report says which data the tuner scored on


def test_max_trials_caps_the_search_and_the_best_is_still_emitted(tuned):
    fp32 = onnx.load(
        str(tuned.out_dir / next(a["path"] for a in tuned.manifest["artifacts"] if a["precision"] == "fp32"))
    )
    x, y = digits_arrays("test")
    data = Dataset({"image": x[:200]}, y[:200], "digits:test")
    calib = Dataset({"image": digits_arrays("train")[0][:64]}, None, "digits:train")
    ref = compute_reference(
        ModelState(onnx=fp32, inputs=(TensorSpec("image", ("batch", 1, 8, 8)),)), data, BUILTIN["top1"], 64
    )
    result = tune_int8(fp32, calib, data, ref, Int8Config(), TuneSpec(max_trials=2), budget=0.01)
    assert len(result.trials) == 2 and not result.within_budget
    assert result.best.index == 1  # equal drift: the earlier, as-configured candidate wins
    benign = tune_int8(
        fp32,
        calib,
        data,
        ref,
        Int8Config(exclude=list(_int8(tuned)["details"]["tuning"]["fallback"])),
        TuneSpec(),
        budget=0.01,
    )
    assert len(benign.trials) == 1 and benign.within_budget  # within budget at once: no further trials


def test_explain_lists_layers_worst_first_and_the_fallback(tuned, tmp_path):
    from deployc.commands.explain import explain, layer_report
    from deployc.errors import UsageError

    errors, facts = layer_report(tuned.out_dir, samples=32)
    added = [e.added for e in errors]
    assert added == sorted(added, reverse=True) and len(errors) >= 8
    assert all(e.error < 0.05 for e in errors)  # after tuning no layer is badly off
    assert "digits:train" in facts["data"]  # explain compares on calibration data
    text = explain(tuned.out_dir, samples=32, top=3)
    assert text.count("node_") >= 3 and "layers kept in fp32: " + ", ".join(facts["tuning"]["fallback"]) in text
    with pytest.raises(UsageError, match="no manifest.json"):
        explain(tmp_path)
