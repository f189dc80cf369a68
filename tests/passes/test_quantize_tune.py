"""What replaced quantize.tune: the build's remedies on examples/quant_tune.yaml (the quantization-hostile model),
entropy calibration that is no longer MinMax in disguise, and `deployc explain` on the remedied artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.driver.build import BuildResult, build
from deployc.examples.digits_cnn import pretrained
from deployc.passes.export import export_onnx
from deployc.passes.quantize import Int8Config, quantize_int8
from deployc.passes.simplify import simplify_proto

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quant_tune.yaml"


@pytest.fixture(scope="module")
def remedied(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return build(EXAMPLE, out=tmp_path_factory.mktemp("tune") / "out", quiet=True)


def _int8(result: BuildResult) -> dict:
    return next(a for a in result.manifest["artifacts"] if a["precision"] == "int8")


def test_the_example_ships_a_passing_int8_once_entropy_clips_the_outlier(remedied):
    art = _int8(remedied)
    remedies = art["details"]["remedies"]
    log = remedies["trial_log"]
    assert [t["change"] for t in log[:3]] == ["—", "percentile", "entropy"]
    assert log[0]["drift"] > 0.5 and log[1]["drift"] > 0.5 and log[2]["drift"] < 0.05  # minmax/percentile keep it
    assert art["gate"]["status"] == "pass" and remedied.exit_code == 0 and log[-1]["gate"] == "pass"
    assert remedies["chosen_trial"] == len(log) and remedies["quantize"]["calibration"] == "entropy"
    record = next(p for p in art["passes"] if p["name"] == "quantize.int8")
    assert record["config"]["calibration"] == "entropy"  # the shipped file is made by the trial it names
    assert record["config"]["exclude"] == remedies["fallback"]  # any fallback built on the entropy trial


def _digits_fp32() -> tuple[onnx.ModelProto, Dataset]:
    model = pretrained()
    state = ModelState(module=model, inputs=(TensorSpec("image", ("batch", 1, 8, 8)),))
    x, _ = digits_arrays("train")
    return simplify_proto(export_onnx(model, state)), Dataset({"image": x[:64]}, None, "digits:train")


def _activation_scales(proto: onnx.ModelProto) -> dict[str, float]:
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    return {
        n.input[0]: float(inits[n.input[1]]) for n in proto.graph.node if n.op_type == "QuantizeLinear"
    }  # activations are quantized per tensor: one scale each


def test_entropy_calibration_searches_thresholds_and_differs_from_minmax():
    fp32, data = _digits_fp32()
    minmax = _activation_scales(quantize_int8(fp32, data, Int8Config(calibration="minmax")))
    entropy = _activation_scales(quantize_int8(fp32, data, Int8Config(calibration="entropy")))
    assert minmax.keys() == entropy.keys() and len(minmax) >= 8
    smaller = [t for t in minmax if entropy[t] < minmax[t] * (1 - 1e-6)]
    assert len(smaller) >= len(minmax) // 2  # KL clips the long tails; with 128 bins it returned min/max exactly
    assert all(entropy[t] <= minmax[t] * (1 + 1e-6) for t in minmax)  # a threshold never widens the observed range
    again = _activation_scales(quantize_int8(fp32, data, Int8Config(calibration="entropy")))
    assert again == entropy  # deterministic, and the in-process memo of the ranges gives the same model
    assert np.isfinite(list(entropy.values())).all()


def test_explain_lists_layers_worst_first_and_the_remedies(remedied, tmp_path):
    from deployc.commands.explain import explain, layer_report
    from deployc.errors import UsageError

    errors, facts = layer_report(remedied.out_dir, samples=32)
    added = [e.added for e in errors]
    assert added == sorted(added, reverse=True) and len(errors) >= 8
    assert "digits:train" in facts["data"]  # explain compares on calibration data
    text = explain(remedied.out_dir, samples=32, top=3)
    n = _int8(remedied)["details"]["remedies"]["trials"]
    assert text.count("node_") >= 3 and f"remedies: trial {n} of {n} shipped, drift +0" in text and "passed)" in text
    with pytest.raises(UsageError, match="no manifest.json"):
        explain(tmp_path)


def test_histogram_calibration_takes_a_sample_count_its_batch_does_not_divide():
    fp32, data = _digits_fp32()
    odd = data.take(24)  # 16 + 8: onnxruntime's histogram calibrators stacked the batches and failed
    for method in ("percentile", "entropy"):
        proto = quantize_int8(fp32, odd, Int8Config(calibration=method, calibration_batch=16))
        assert _activation_scales(proto) and onnx.checker.check_model(proto) is None
