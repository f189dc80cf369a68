"""Each target realises the remedy stages with its own quantizer, and each stage really changes the artifact:
tensorrt (symmetric explicit Q/DQ) and tflite (ai-edge-quantizer recipes), on the quantization-hostile model."""

from __future__ import annotations

import onnx
import pytest

from deployc.compiler.registry import get_target
from deployc.driver.build import build
from tests.pipeline.validation.test_remedies import hostile_config


def _int8(result, target: str) -> dict:
    return next(a for a in result.manifest["artifacts"] if a["target"] == target and a["precision"] == "int8")


def test_tensorrt_remedies_change_its_qdq_network_and_fallback_leaves_layers_without_qdq(tmp_path):
    remedies = {"stages": ["calibration", "symmetry", "granularity", "fallback"], "methods": ["minmax", "percentile"]}
    result = build(hostile_config(remedies, targets={"tensorrt": {"precision": ["int8"]}}), out=tmp_path, quiet=True)
    art = _int8(result, "tensorrt")
    log = art["details"]["remedies"]["trial_log"]
    assert [t["stage"] for t in log][:3] == ["as configured", "calibration", "granularity"]  # no symmetry stage
    assert len({t["sha256"] for t in log}) == len(log)  # every trial is a different network
    assert log[-1]["stage"] == "fallback" and art["gate"]["status"] == "pass" and result.exit_code == 0
    first_fallback = next(t for t in log if t["stage"] == "fallback")  # fp16 may be what misses the budget
    assert first_fallback["change"] == "the unquantized rest in fp32, not fp16"
    proto = onnx.load(str(result.out_dir / art["path"]))
    dq_outputs = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    kept = [n for n in proto.graph.node if n.name in art["details"]["remedies"]["fallback"]]
    assert kept and all(n.input[1] not in dq_outputs for n in kept if n.op_type == "Conv")  # float weights
    made_by_kept = {o for n in kept for o in n.output}
    between = [i for n in kept for i in n.input if i in made_by_kept]  # e.g. spread → squeeze, the outlier tensor
    assert between and not set(between) & dq_outputs  # a tensor between two kept layers has no Q/DQ
    zero_points = [i for i in proto.graph.initializer if "zero_point" in i.name]
    assert zero_points and all(not any(onnx.numpy_helper.to_array(z).ravel()) for z in zero_points)  # symmetric


@pytest.mark.skipif(get_target("tflite").available() is not None, reason="litert-torch / ai-edge-quantizer missing")
def test_tflite_remedies_change_its_flatbuffer_and_fallback_keeps_ops_float(tmp_path):
    result = build(
        hostile_config(
            {"stages": ["calibration", "symmetry", "granularity", "fallback"]},
            targets={"tflite": {"precision": ["int8"]}},
        ),
        out=tmp_path,
        quiet=True,
    )
    art = _int8(result, "tflite")
    log = art["details"]["remedies"]["trial_log"]
    assert [(t["stage"], t["change"]) for t in log[:5]] == [
        ("as configured", "—"),
        ("calibration", "moving average activation ranges"),
        ("calibration", "MSE weights"),
        ("calibration", "OCTAV weights"),
        ("granularity", "per-tensor weights"),
    ]  # no symmetry stage: LiteRT int8 activations are asymmetric
    assert len({t["sha256"] for t in log}) == len(log)  # every recipe gives a different flatbuffer
    assert log[-1]["stage"] == "fallback" and art["gate"]["status"] == "pass" and result.exit_code == 0
    assert "layer(s) in float" in log[-1]["change"]  # tflite falls back to float layers directly (no fp16 stage)
    assert not art["details"]["npu"]["integer_only"]  # the fallback ops run in float, and the artifact says so
    record = next(p for p in art["passes"] if p["name"] == "ai_edge_quantizer")
    assert record["config"]["remedy"]["float_tensors"] == art["details"]["remedies"]["fallback"]


def test_tflite_fallback_keeps_an_unrolled_module_float_as_one_unit():
    """litert unrolls an LSTM into thousands of ops named '<module path>;<n>': fallback tensor by tensor never
    reaches them within the trial budget, so a big module's tensors fall back as one module-wide entry, whose
    recipe regex matches every op of that module and nothing else."""
    import re

    from deployc.targets.tflite_remedies import BIG_MODULE, by_module, float_scope

    lstm = "m.Encoder/torch.nn.modules.rnn.LSTM_lstm"
    tensors = [f"{lstm};{i}" for i in range(BIG_MODULE + 5)] + ["m.Encoder/torch.nn.modules.linear.Linear_fc;"]
    units = by_module([[f"{lstm};3", f"{lstm};4"], ["m.Encoder/torch.nn.modules.linear.Linear_fc;"]], tensors)
    assert units == [[f"{lstm};*"], ["m.Encoder/torch.nn.modules.linear.Linear_fc;"]]
    scope = re.compile(float_scope(units[0][0]))
    assert scope.search(f"{lstm};821;") and scope.search(f"x;{lstm};;")  # an op writing one of its tensors
    assert not scope.search("m.Encoder/torch.nn.modules.linear.Linear_fc;;")
    assert not scope.search(f"{lstm}_2;5;")  # another module whose name merely starts the same
