"""Int8 coverage per artifact: the share of MACs (or weights) that run in int8, the weighted ops left in float,
and a warning when an int8/dynamic artifact is mostly float; a dynamic artifact with nothing in int8 is not
emitted under an int8 name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.driver.build import build
from deployc.passes.coverage import coverage_details, onnx_int8_coverage
from deployc.passes.export import export_onnx
from deployc.passes.quantize import DynamicConfig, Int8Config, quantize_dynamic_int8, quantize_int8

MODELS = '''
import numpy as np
import torch
from torch import nn


class SpeakerLstm(nn.Module):
    """An LSTM over 20 frames of 16 features, last state into 4 classes: nearly all MACs in the LSTM."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(16, 64, batch_first=True)
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


class AllConv(nn.Module):
    """A fully convolutional classifier: no MatMul/Gemm anywhere."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 1))

    def forward(self, x):
        return self.body(x).mean((2, 3))


class ConvHead(nn.Module):
    """Convolutions and a 2-class linear head (PaddleOCR's direction classifier's shape): ~0.01% of MACs in MatMul."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1))
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def lstm():
    return SpeakerLstm().eval()


def convhead():
    return ConvHead().eval()


def allconv():
    return AllConv().eval()


def frames():
    x = np.random.default_rng(0).standard_normal((64, 20, 16)).astype(np.float32)
    return [({"x": x}, None)]
'''


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("coverage")
    (folder / "models.py").write_text(MODELS)
    return folder


def _lstm_proto() -> tuple:
    torch.manual_seed(0)
    lstm = nn.LSTM(16, 64, batch_first=True)
    head = nn.Linear(64, 4)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.head = lstm, head

        def forward(self, x):
            return self.head(self.lstm(x)[0][:, -1])

    proto = export_onnx(Net().eval(), ModelState(inputs=(TensorSpec("x", ("batch", 20, 16)),)))
    x = np.random.default_rng(0).standard_normal((32, 20, 16)).astype(np.float32)
    return proto, x


def test_lstm_static_int8_keeps_the_lstm_float_and_says_so():
    proto, x = _lstm_proto()
    int8 = onnx_int8_coverage(quantize_int8(proto, Dataset({"x": x}, None, "x"), Int8Config()))
    # MACs: LSTM 20 steps × 4·64·(16+64) = 409,600; head 64·4 = 256 (the only int8 op)
    assert int8.macs == pytest.approx(256 / (409_600 + 256), rel=1e-6)
    assert int8.float_ops == {"LSTM": 1}
    logged: list[str] = []
    details = coverage_details(int8, "onnx/int8", logged.append, "LSTM stays float")
    assert details["warnings"] == ["onnx/int8: 0.06% in int8 because LSTM stays float"] and len(logged) == 1
    assert details["int8_coverage"] == {"macs": 0.0006, "weights": 0.0123, "float_ops": {"LSTM": 1}}
    dynamic = onnx_int8_coverage(quantize_dynamic_int8(proto, DynamicConfig()), {"x": x[:1]})
    assert dynamic.macs == 1.0 and dynamic.float_ops == {}
    assert "warnings" not in coverage_details(dynamic, "onnx/dynamic", logged.append, "unused hint")
    assert onnx_int8_coverage(proto).macs == 0.0  # the fp32 graph: nothing in int8


def test_coverage_in_the_manifest_with_a_warning(models_dir: Path, tmp_path: Path):
    config = {
        "name": "speaker",
        "model": {"factory": f"{models_dir}/models.py:lstm", "inputs": [{"name": "x", "shape": ["batch", 20, 16]}]},
        "data": {
            "validation": f"{models_dir}/models.py:frames",
            "calibration": f"{models_dir}/models.py:frames",
            "metric": "cosine",
        },
        "targets": {"onnx": {"precision": ["fp32", "int8", "dynamic"]}},
        "validate": {"max_drift": 0.05, "latency_runs": 2},
    }
    result = build(config, out=tmp_path / "out", quiet=True)
    arts = {a["precision"]: a for a in json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"]}
    int8, dynamic = arts["int8"]["details"], arts["dynamic"]["details"]
    assert int8["int8_coverage"]["float_ops"] == {"LSTM": 1} and int8["int8_coverage"]["macs"] < 0.01
    assert "onnx/int8 runs only 0% of its MACs in int8; float ops: LSTM×1" in int8["warnings"]  # the driver's
    assert any(
        w.startswith("onnx/int8: 0.06% in int8 because onnxruntime's static int8 leaves LSTM") for w in int8["warnings"]
    )
    assert dynamic["int8_coverage"] == {"macs": 1.0, "weights": 1.0, "float_ops": {}}
    assert "int8_coverage" not in arts["fp32"]["details"]
    assert result.exit_code == 0


@pytest.mark.parametrize(
    ("factory", "reason", "floats"),
    [
        ("allconv", "no weight of this graph becomes int8", {"Conv": 2}),
        ("convhead", "only 0.01% of this graph's MACs become int8", {"Conv": 2}),
    ],
)
def test_dynamic_of_a_conv_net_is_not_emitted(models_dir: Path, tmp_path: Path, factory, reason, floats):
    """onnxruntime's dynamic int8 has nothing (or only a tiny head) to quantize in a conv net: no file that is
    the fp32 graph under an int8 name; the artifact is skipped with the reason, the rest of the build passes."""
    config = {
        "name": factory,
        "model": {
            "factory": f"{models_dir}/models.py:{factory}",
            "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8]}],
        },
        "data": {"validation": "digits:test", "calibration": "digits:train", "metric": "cosine"},
        "targets": {"onnx": {"precision": ["fp32", "dynamic", "int8"]}},
        "validate": {"max_drift": 0.05, "latency_runs": 2},
    }
    result = build(config, out=tmp_path / "out", quiet=True)
    arts = {a["precision"]: a for a in result.manifest["artifacts"]}
    dynamic = arts["dynamic"]
    assert dynamic["gate"]["status"] == "skipped" and dynamic["path"] is None
    assert "dynamic int8 quantizes only MatMul/Gemm" in dynamic["gate"]["reason"]
    assert reason in dynamic["gate"]["reason"]
    assert dynamic["details"]["int8_coverage"]["float_ops"] == floats
    assert arts["int8"]["details"]["int8_coverage"]["macs"] == 1.0
    assert not list((tmp_path / "out" / "onnx").glob("*.dynamic.onnx"))
    assert result.exit_code == 0


def test_coverage_counts_layers_inside_if_branches():
    """Weighted ops inside If bodies count (spox's Silero VAD keeps every layer there, and onnxruntime's static
    quantizer does not enter them): an 'int8' graph like that has nothing in int8, and the onnx/tensorrt targets
    refuse to ship it under that name."""
    from deployc.targets.quantized_details import NothingInInt8
    from tests.passes.test_fp16 import branchy

    coverage = onnx_int8_coverage(branchy())
    assert coverage.float_ops == {"MatMul": 2} and coverage.int8_ops == 0 and coverage.weights == 0.0
    assert "weighted ops: MatMul×2" in str(NothingInInt8(coverage))


def test_quantized_values_moved_by_a_pad_still_count_as_int8():
    """cpu.int8 pads a conv's quantized input with zero channels (Q → Pad → DQ → Conv): still an int8 conv."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp"),
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 1, 0, 0], np.int64), "pads"),
        numpy_helper.from_array(rng.integers(-127, 127, (16, 4, 3, 3)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.full(16, 0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(16, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["x_q"]),
        helper.make_node("Pad", ["x_q", "pads", "zp"], ["x_q4"]),
        helper.make_node("DequantizeLinear", ["x_q4", "s", "zp"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], axis=0),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], pads=[1, 1, 1, 1], name="stem"),
    ]
    graph = helper.make_graph(
        nodes,
        "padded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 8, 8])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    coverage = onnx_int8_coverage(proto, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert coverage.int8_ops == 1 and coverage.float_ops == {} and coverage.macs == 1.0 and coverage.weights == 1.0
