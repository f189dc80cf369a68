"""ONNX quantization passes: static int8 QDQ (per-channel, calibration methods, exclusions), dynamic, fp16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from passes.export import export_onnx
from passes.onnx_util import op_counts
from passes.quantize import DynamicConfig, Int8Config, convert_fp16, quantize_dynamic_int8, quantize_int8
from pipeline.data import Dataset, digits_arrays
from pipeline.state import ModelState, TensorSpec


@pytest.fixture(scope="module")
def digits_proto(digits_onnx: Path) -> onnx.ModelProto:
    return onnx.load(str(digits_onnx))


@pytest.fixture(scope="module")
def calib() -> Dataset:
    x, y = digits_arrays("train")
    return Dataset({"image": x[:128]}, y[:128], "digits:train")


def _run(proto: onnx.ModelProto, feed: dict) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _weight_scales(proto: onnx.ModelProto) -> list[np.ndarray]:
    """Scales of the DequantizeLinear nodes that read int8 weight initializers."""
    inits = {i.name: i for i in proto.graph.initializer}
    out = []
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8:
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
        return next(numpy_helper.to_array(i) for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "image"
                    for i in proto.graph.initializer if i.name == n.input[1])

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
