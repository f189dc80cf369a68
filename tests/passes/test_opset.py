"""ONNX below opset 13 (paddle2onnx, old torch exports): quantize.int8 upgrades it with onnx's version converter
before writing per-channel DequantizeLinear (which needs opset 13), and falls back to per-tensor weights, saying
why, when the converter cannot upgrade the graph. Never an invalid graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deployc.core.ort import session
from deployc.driver.build import build


def opset11_classifier(local_function: bool = False) -> onnx.ModelProto:
    """image → Conv → Relu → GlobalAveragePool → Squeeze(axes attribute) → Gemm → Softmax(axis=1), at opset 11.

    Squeeze and Softmax changed at opset 13, so the upgrade has real work to do. With `local_function` the Relu
    is a model-local function, which onnx's version converter (1.23) cannot carry over: its result names an op
    nothing defines."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32), "W"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((8, 10)).astype(np.float32), "G"),
        numpy_helper.from_array(np.zeros(10, np.float32), "C"),
    ]
    relu = helper.make_node("ScaledRelu" if local_function else "Relu", ["c"], ["r"], name="act")
    if local_function:
        relu.domain = "local"
    nodes = [
        helper.make_node("Conv", ["image", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        relu,
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Squeeze", ["p"], ["s"], axes=[2, 3], name="squeeze"),
        helper.make_node("Gemm", ["s", "G", "C"], ["z"], name="fc"),
        helper.make_node("Softmax", ["z"], ["probs"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "opset11",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    opsets = [helper.make_opsetid("", 11)]
    functions = []
    if local_function:
        opsets.append(helper.make_opsetid("local", 1))
        body = [helper.make_node("Relu", ["a"], ["b"])]
        functions.append(helper.make_function("local", "ScaledRelu", ["a"], ["b"], body, [helper.make_opsetid("", 11)]))
    model = helper.make_model(graph, opset_imports=opsets, functions=functions, ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    return model


def _build(tmp_path: Path, model: onnx.ModelProto, targets: dict) -> tuple:
    onnx.save(model, tmp_path / "model.onnx")
    config = {
        "name": "old",
        "model": {"onnx": str(tmp_path / "model.onnx")},
        "data": {"validation": "digits:test", "calibration": "digits:train", "metric": "cosine"},
        "targets": targets,
        "quantize": {"samples": 64},
        "validate": {"max_drift": 0.05, "latency_runs": 2},
    }
    return build(config, out=tmp_path / "out", quiet=True)


def _artifact(result, label: str) -> dict:
    return next(a for a in result.manifest["artifacts"] if f"{a['target']}/{a['precision']}" == label)


def _weight_scales(path: Path) -> list[np.ndarray]:
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    return [
        numpy_helper.to_array(inits[n.input[1]])
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT8
    ]


def test_opset11_int8_is_upgraded_and_per_channel(tmp_path: Path) -> None:
    result = _build(tmp_path, opset11_classifier(), {"onnx": {"precision": ["fp32", "int8"]}})
    assert result.exit_code == 0
    int8 = _artifact(result, "onnx/int8")
    assert int8["gate"]["status"] == "pass" and int8["details"]["opset"] == 13
    record = next(r for r in int8["passes"] if r["name"] == "quantize.int8")
    assert record["metrics"]["opset"] == {"from": 11, "to": 13} and "per_channel_blocked" not in record["metrics"]
    path = result.out_dir / int8["path"]
    scales = _weight_scales(path)
    assert scales and any(s.size == 8 for s in scales)  # the conv's 8 output channels, one scale each
    session(path)  # onnxruntime loads it
    assert _artifact(result, "onnx/fp32")["details"]["opset"] == 11  # fp32 ships the graph as the user gave it


def test_graph_the_converter_cannot_upgrade_falls_back_to_per_tensor(tmp_path: Path) -> None:
    # simplify off: onnxscript's optimizer would inline the function, and the upgrade would then succeed
    targets = {"onnx": {"precision": ["int8"], "simplify": False}}
    result = _build(tmp_path, opset11_classifier(local_function=True), targets)
    int8 = _artifact(result, "onnx/int8")
    assert int8["gate"]["status"] == "pass", int8["gate"]
    record = next(r for r in int8["passes"] if r["name"] == "quantize.int8")
    assert record["metrics"]["opset"] == {"from": 11, "to": 11}
    assert "could not upgrade opset 11 to 13" in record["metrics"]["per_channel_blocked"]
    assert "per-tensor" in record["metrics"]["per_channel_blocked"]
    scales = _weight_scales(result.out_dir / int8["path"])
    assert scales and all(s.size == 1 for s in scales)
    assert int8["metrics"]["cosine"] > 0.99


@pytest.mark.parametrize("precision", ["dynamic"])
def test_opset11_dynamic_is_upgraded(tmp_path: Path, precision: str) -> None:
    result = _build(tmp_path, opset11_classifier(), {"onnx": {"precision": [precision]}})
    art = _artifact(result, f"onnx/{precision}")
    assert art["gate"]["status"] == "pass" and art["details"]["opset"] == 13
