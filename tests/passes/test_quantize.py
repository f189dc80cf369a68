"""ONNX quantization passes: static int8 QDQ (per-channel, calibration methods, exclusions), dynamic, fp16."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from deployc.core.ort import session
from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.passes.export import export_onnx
from deployc.passes.fp16 import convert_fp16
from deployc.passes.onnx_util import op_counts
from deployc.passes.quantize import DynamicConfig, Int8Config, quantize_dynamic_int8, quantize_int8


@pytest.fixture(scope="module")
def calib() -> Dataset:
    x, y = digits_arrays("train")
    return Dataset({"image": x[:128]}, y[:128], "digits:train")


def _run(proto: onnx.ModelProto, feed: dict) -> np.ndarray:
    return session(proto).run(None, feed)[0]


def _weight_scales(proto: onnx.ModelProto) -> list[np.ndarray]:
    """Scales of the DequantizeLinear nodes that read int8 weight initializers."""
    inits = {i.name: i for i in proto.graph.initializer}
    out = []
    for n in proto.graph.node:
        if (
            n.op_type == "DequantizeLinear"
            and n.input[0] in inits
            and inits[n.input[0]].data_type == onnx.TensorProto.INT8
        ):
            out.append(numpy_helper.to_array(inits[n.input[1]]))
    return out


def test_int8_per_channel_qdq(digits_proto, calib):
    q = quantize_int8(digits_proto, calib, Int8Config())
    counts = op_counts(q)
    assert counts["QuantizeLinear"] >= 3 and counts["DequantizeLinear"] >= counts["QuantizeLinear"]
    scales = _weight_scales(q)
    assert scales and all(s.ndim == 1 and s.size > 1 for s in scales)  # one scale per output channel
    per_tensor = quantize_int8(digits_proto, calib, Int8Config(per_channel=False))
    assert all(s.size == 1 for s in _weight_scales(per_tensor))
    x, y = digits_arrays("test")
    acc = (_run(q, {"image": x}).argmax(1) == y).mean()
    assert acc >= (_run(digits_proto, {"image": x}).argmax(1) == y).mean() - 0.01


def test_calibration_methods_give_different_activation_ranges(digits_proto, calib):
    def input_scale(proto):
        return next(
            numpy_helper.to_array(i)
            for n in proto.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] == "image"
            for i in proto.graph.initializer
            if i.name == n.input[1]
        )

    minmax = input_scale(quantize_int8(digits_proto, calib, Int8Config(calibration="minmax")))
    pct = input_scale(quantize_int8(digits_proto, calib, Int8Config(calibration="percentile", percentile=90.0)))
    assert minmax == pytest.approx(1.0 / 255, rel=1e-3)  # digits pixels span exactly [0, 1]
    assert pct < minmax


def test_excluded_node_stays_float(digits_proto, calib):
    fc = next(n.name for n in digits_proto.graph.node if n.op_type == "Gemm")
    q = quantize_int8(digits_proto, calib, Int8Config(exclude=[fc]))
    gemm = next(n for n in q.graph.node if n.op_type == "Gemm")
    inits = {i.name: i for i in q.graph.initializer}
    assert inits[gemm.input[1]].data_type == onnx.TensorProto.FLOAT  # its weight was not quantized


class _GRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru = nn.GRU(8, 32, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0][:, -1])


def test_dynamic_int8_on_gru():
    model = _GRUClassifier().eval()
    proto = export_onnx(model, ModelState(inputs=(TensorSpec("seq", ("batch", 12, 8)),)))
    q = quantize_dynamic_int8(proto, DynamicConfig())
    counts = op_counts(q)
    assert counts.get("DynamicQuantizeLinear", 0) >= 1, counts
    assert any(op in counts for op in ("MatMulInteger", "DynamicQuantizeLSTM", "DynamicQuantizeGRU")), counts
    x = np.random.default_rng(0).standard_normal((16, 12, 8)).astype(np.float32)
    want = model(torch.from_numpy(x)).detach().numpy()
    got = _run(q, {"seq": x})
    assert np.abs(got - want).max() < 0.05 and len(q.SerializeToString()) < len(proto.SerializeToString())


def test_fp16_keeps_float32_io(digits_proto):
    h = convert_fp16(digits_proto)
    assert h.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in h.graph.initializer)
    x = digits_arrays("test")[0][:64]
    np.testing.assert_allclose(_run(h, {"image": x}), _run(digits_proto, {"image": x}), atol=2e-2)


def test_int8_only_quantizes_the_named_node(digits_proto, calib):
    conv = next(n.name for n in digits_proto.graph.node if n.op_type == "Conv")
    q = quantize_int8(digits_proto, calib, Int8Config(), only=[conv])
    node = next(n for n in q.graph.node if n.name == conv)
    inits = {i.name: i for i in q.graph.initializer}
    assert len(_weight_scales(q)) == 1  # one int8 weight: that conv's
    assert node.input[1] not in inits or inits[node.input[1]].data_type != onnx.TensorProto.FLOAT
    others = [n for n in q.graph.node if n.op_type in ("Conv", "Gemm") and n.name != conv]
    assert others and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in others)


def test_latency_gate_warns_or_fails_an_int8_artifact_slower_than_fp32():
    from deployc.compiler.contracts import Artifact
    from deployc.validation.gates import latency_gate

    def arts():
        fp32 = Artifact("onnx", "fp32", None, "onnxruntime", "1", perf={"latency_ms_batch1": 0.10})
        int8 = Artifact(
            "onnx",
            "int8",
            None,
            "onnxruntime",
            "1",
            perf={"latency_ms_batch1": 0.12},
            gate={"status": "pass", "reason": "ok"},
        )
        fast = Artifact(
            "tflite",
            "int8",
            None,
            "litert",
            "1",
            perf={"latency_ms_batch1": 0.01},
            gate={"status": "pass", "reason": "ok"},
        )
        return [fp32, int8, fast]

    def proxies():
        engine = {"engine": "not built (no GPU)"}
        fp32 = Artifact("tensorrt", "fp32", None, "onnxruntime (TensorRT proxy)", "1", details=dict(engine))
        int8 = Artifact("tensorrt", "int8", None, "onnxruntime (TensorRT proxy)", "1", details=dict(engine))
        fp32.perf, int8.perf = {"latency_ms_batch1": 0.10}, {"latency_ms_batch1": 0.30}
        return [fp32, int8]

    assert latency_gate(proxies(), "fail") == []  # Q/DQ run unfused on the proxy: its timing is not the engine's
    warned = arts()
    assert len(latency_gate(warned, "warn")) == 1
    found = latency_gate(arts(), "warn")[0]
    assert "0.120 vs 0.100 ms" in found and warned[1].gate["status"] == "pass"
    assert "warnings" not in warned[1].details  # warn mode only logs: manifest.json must not depend on timing
    failed = arts()
    latency_gate(failed, "fail")
    assert failed[1].gate["status"] == "fail" and failed[2].gate["status"] == "pass"  # no tflite fp32 to compare
    assert failed[1].details["warnings"] == [
        "onnx/int8 is not faster than onnx/fp32 on onnxruntime (batch 1; figures in timings.json)"
    ]
    assert latency_gate(arts(), "off") == []


ENCODER_MODEL = '''
import numpy as np
import torch
from torch import nn


class Encoder(nn.Module):
    """A one-layer transformer encoder over 12 steps of 8 features, mean-pooled into 4 classes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 64)
        self.layer = nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.layer(self.embed(x)).mean(1))


def make():
    return Encoder().eval()


def sequences():
    x = np.random.default_rng(0).standard_normal((64, 12, 8)).astype(np.float32)
    return [({"seq": x}, None)]  # one item holding the whole batch
'''


def test_dynamic_int8_transformer_through_the_cli(tmp_path):
    import json

    from deployc.cli import main

    (tmp_path / "encoder.py").write_text(ENCODER_MODEL)
    config = {
        "name": "encoder",
        "model": {"factory": "encoder.py:make", "inputs": [{"name": "seq", "shape": ["batch", 12, 8]}]},
        "data": {"validation": "encoder.py:sequences", "metric": "cosine"},
        "targets": {"onnx": {"precision": ["fp32", "dynamic"]}},
        "validate": {"max_drift": 0.01, "latency_runs": 3},
    }
    (tmp_path / "encoder.yaml").write_text(json.dumps(config))
    assert main(["build", str(tmp_path / "encoder.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    fp32, dyn = manifest["artifacts"]
    assert dyn["details"]["ops"].get("DynamicQuantizeLinear", 0) >= 4  # every projection's input, quantized at run time
    assert dyn["details"]["ops"].get("MatMulInteger", 0) >= 4 and "MatMulInteger" not in fp32["details"]["ops"]
    assert dyn["metrics"]["cosine"] > 0.999 and dyn["bytes"] < 0.5 * fp32["bytes"]


def _unet_block() -> onnx.ModelProto:
    """x → strided Conv → Resize ×2 → Concat with x → Conv, with symbolic height/width: onnxruntime's symbolic shape
    inference cannot prove the two Concat inputs the same size (as in YOLOv8's neck) and gives up."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.array([], np.float32), "roi"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(rng.standard_normal((2, 8, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["down"], strides=[2, 2], pads=[1, 1, 1, 1], name="down"),
        helper.make_node("Resize", ["down", "roi", "scales"], ["up"], mode="nearest", name="up"),
        helper.make_node("Concat", ["x", "up"], ["cat"], axis=1, name="skip"),
        helper.make_node("Conv", ["cat", "w2"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "unet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "height", "width"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_quantization_writes_nothing_into_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's symbolic shape inference saves 'sym_shape_infer_temp.onnx' (+ .data files for big models)
    into the CWD when it gives up; deployc's quantizers run in their own scratch folder."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = _unet_block()
    work = tmp_path / "user-project"
    work.mkdir()
    monkeypatch.chdir(work)
    onnx.save(proto, tmp_path / "in.onnx")
    with pytest.raises(Exception, match="Incomplete symbolic shape inference"):  # the library's own behaviour
        quant_pre_process(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"), skip_symbolic_shape=False)
    assert [p.name for p in work.iterdir()] == ["sym_shape_infer_temp.onnx"]
    (work / "sym_shape_infer_temp.onnx").unlink()

    x = np.random.default_rng(1).standard_normal((8, 4, 12, 12)).astype(np.float32)
    q = quantize_int8(proto, Dataset({"x": x}, None, "x"), Int8Config())
    d = quantize_dynamic_int8(proto, DynamicConfig())
    assert list(work.iterdir()) == []
    assert op_counts(q)["QuantizeLinear"] >= 3 and _run(d, {"x": x}).shape == (8, 2, 12, 12)


def test_shared_bias_next_to_a_tensor_named_like_its_copies(tmp_path):
    """Three convs share 'bias' and the first writes a tensor 'bias1' (tf2onnx names like basic-pitch's 'conv1d_25'
    beside 'conv1d_252'): onnxruntime's quantizer names its bias copies bias0, bias1... and the third conv ends up
    reading the activation. deployc gives each conv its own bias first; the int8 graph loads and computes."""
    from onnx import TensorProto, helper
    from onnxruntime.quantization import QuantFormat, quantize_static

    from deployc.compiler.manager import graph_problem
    from deployc.core.ort import CalibrationReader

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3, "w2"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "bias"], ["bias1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Sigmoid", ["bias1"], ["s"], name="act"),
        helper.make_node("Conv", ["s", "w2", "bias"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Conv", ["c2", "w2", "bias"], ["y"], pads=[1, 1, 1, 1], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes,
        "shared_bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = Dataset({"x": rng.standard_normal((16, 1, 8, 8)).astype(np.float32)}, None, "x")
    onnx.save(proto, tmp_path / "m.onnx")
    quantize_static(str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), CalibrationReader(data), QuantFormat.QDQ)
    assert "cannot load" in graph_problem(onnx.load(str(tmp_path / "q.onnx")))  # the library's defect
    q = quantize_int8(proto, data, Int8Config())
    assert graph_problem(q) is None
    want, got = _run(proto, {"x": data.inputs["x"]}), _run(q, {"x": data.inputs["x"]})
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_dense_layer_with_a_row_bias(tmp_path):
    """MatMul + Add(bias [1, N]) (tf2onnx's Dense, Magika): the quantizer's pre-processing fuses it into a Gemm with
    a 2-D C, which onnxruntime's per-channel bias code cannot compare ('truth value of an array is ambiguous')."""
    from onnx import TensorProto, helper
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from deployc.core.ort import CalibrationReader

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "kernel"),
        numpy_helper.from_array(rng.standard_normal((1, 4)).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "kernel"], ["h"], name="dense/MatMul"),
        helper.make_node("Add", ["h", "bias"], ["y"], name="dense/BiasAdd"),
    ]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = Dataset({"x": rng.standard_normal((16, 8)).astype(np.float32)}, None, "x")
    onnx.save(proto, tmp_path / "m.onnx")
    quant_pre_process(str(tmp_path / "m.onnx"), str(tmp_path / "prep.onnx"))
    assert op_counts(onnx.load(str(tmp_path / "prep.onnx"))) == {"Gemm": 1}
    with pytest.raises(ValueError, match="truth value of an array"):  # the library's defect
        quantize_static(
            str(tmp_path / "prep.onnx"),
            str(tmp_path / "q.onnx"),
            CalibrationReader(data),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
        )
    q = quantize_int8(proto, data, Int8Config())
    want, got = _run(proto, {"x": data.inputs["x"]}), _run(q, {"x": data.inputs["x"]})
    assert op_counts(q)["Gemm"] == 1 and np.abs(got - want).max() < 0.05 * np.abs(want).max()
