"""Int8 coverage per artifact: the share of MACs (or weights) that run in int8, the weighted ops left in float,
and a warning when an int8/dynamic artifact is mostly float; a dynamic artifact with nothing in int8 is not
emitted under an int8 name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deployc.core.ort import session
from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.driver.build import build
from deployc.passes.coverage import coverage_details, onnx_int8_coverage, percent
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


def _lstm_proto(any_length: bool = False) -> tuple:
    """A 20-step LSTM + head; any_length: its input's time axis made symbolic, as an exporter that keeps sequence
    lengths dynamic writes it (torch.export specializes this one)."""
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
    if any_length:
        proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "time"
        del proto.graph.value_info[:]
    x = np.random.default_rng(0).standard_normal((32, 20, 16)).astype(np.float32)
    return proto, x


def test_lstm_static_int8_runs_its_gate_matmuls_in_int8():
    """A fixed-length LSTM is unrolled (passes/recurrent_int8.py): every MAC int8, outputs close to fp32."""
    proto, x = _lstm_proto()
    quantized = quantize_int8(proto, Dataset({"x": x}, None, "x"), Int8Config())
    int8 = onnx_int8_coverage(quantized)
    assert int8.macs == 1.0 and int8.float_ops == {}
    got, want = session(quantized).run(None, {"x": x})[0], session(proto).run(None, {"x": x})[0]
    assert float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)) > 0.99
    dynamic = onnx_int8_coverage(quantize_dynamic_int8(proto, DynamicConfig()), {"x": x[:1]})
    assert dynamic.macs == 1.0 and dynamic.float_ops == {}
    logged: list[str] = []
    assert "warnings" not in coverage_details(dynamic, "onnx/dynamic", logged.append, "unused hint")
    assert onnx_int8_coverage(proto).macs == 0.0  # the fp32 graph: nothing in int8


def test_lstm_of_unknown_length_runs_in_int8_in_a_scan():
    proto, x = _lstm_proto(any_length=True)
    int8 = onnx_int8_coverage(quantize_int8(proto, Dataset({"x": x}, None, "x"), Int8Config()), {"x": x[:1]})
    assert int8.float_ops == {} and int8.macs == 1.0  # the Scan needs no fixed length; its body MatMul is int8


def test_lstm_of_unknown_length_stays_float_when_unrolled_and_says_why():
    proto, x = _lstm_proto(any_length=True)
    spec = Int8Config(recurrent="unroll")
    int8 = onnx_int8_coverage(quantize_int8(proto, Dataset({"x": x}, None, "x"), spec), {"x": x[:1]})
    assert int8.float_ops == {"LSTM": 1} and int8.share < 0.05  # the head (64·4 weights) is the only int8 op
    logged: list[str] = []
    details = coverage_details(int8, "onnx/int8", logged.append, "LSTM stays float")
    assert details["warnings"] == [f"onnx/int8: {percent(int8.share)} in int8 because LSTM stays float"]
    assert len(logged) == 1


def test_coverage_in_the_manifest_names_the_real_reason(models_dir: Path, tmp_path: Path):
    """The fixed-length LSTM runs in int8; the one of unknown length stays float and both targets say why in their
    own terms (no convolution advice on a model without convolutions, no onnxruntime reason on tensorrt)."""
    config = {
        "name": "speaker",
        "model": {"factory": f"{models_dir}/models.py:lstm", "inputs": [{"name": "x", "shape": ["batch", 20, 16]}]},
        "data": {
            "validation": f"{models_dir}/models.py:frames",
            "calibration": f"{models_dir}/models.py:frames",
            "metric": "cosine",
        },
        "targets": {"onnx": {"precision": ["fp32", "int8", "dynamic"]}, "tensorrt": {"precision": ["int8"]}},
        "validate": {"max_drift": 0.05, "latency_runs": 2},
    }
    result = build(config, out=tmp_path / "fixed", quiet=True)
    arts = {f"{a['target']}/{a['precision']}": a for a in result.manifest["artifacts"]}
    assert arts["onnx/int8"]["details"]["int8_coverage"]["macs"] == 1.0
    assert arts["tensorrt/int8"]["details"]["int8_coverage"]["macs"] > 0.99  # the 4-wide head: below its GEMM shapes
    for key in ("onnx/int8", "tensorrt/int8"):
        assert not any("in int8 because" in w for w in arts[key]["details"].get("warnings", []))
    assert arts["onnx/dynamic"]["details"]["int8_coverage"] == {"macs": 1.0, "weights": 1.0, "float_ops": {}}
    assert "int8_coverage" not in arts["onnx/fp32"]["details"]
    assert result.exit_code == 0

    onnx.save(_lstm_proto(any_length=True)[0], tmp_path / "any_length.onnx")
    config["model"] = {"onnx": str(tmp_path / "any_length.onnx")}
    config["quantize"] = {"recurrent": "unroll"}  # the Scan form takes any length; the unrolled one does not
    result = build(config, out=tmp_path / "dynamic", quiet=True)
    arts = {f"{a['target']}/{a['precision']}": a for a in result.manifest["artifacts"]}
    onnx_warning = next(w for w in arts["onnx/int8"]["details"]["warnings"] if "in int8 because" in w)
    assert (
        "LSTM×1 stay float (not rewritten into int8 MatMuls (" in onnx_warning
        and "sequence length is not fixed" in onnx_warning
    )
    assert any(w.endswith("of its MACs in int8; float ops: LSTM×1") for w in arts["onnx/int8"]["details"]["warnings"])
    trt = arts["tensorrt/int8"]
    trt_text = trt["gate"].get("reason", "") + " ".join(trt["details"].get("warnings", []))
    assert "sequence length is not fixed" in trt_text and "onnxruntime" not in trt_text
    assert not any("Conv" in w for a in arts.values() for w in a["details"].get("warnings", []))


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


def test_macs_of_a_graph_with_symbolic_height_and_width_are_counted_at_the_samples_size():
    """A float 1×1 Conv after a global pool beside an int8 3×3 Conv at full resolution: at the sample's 32×32 the
    int8 Conv holds 1024× its 1×1 MACs (at 1×1, as symbolic axes once were, the share read 0.63, not 0.9994)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.standard_normal((16, 8, 1, 1)).astype(np.float32), "w1"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1], name="full"),
        helper.make_node("GlobalAveragePool", ["a"], ["p"], name="pool"),
        helper.make_node("Conv", ["p", "w1"], ["y"], name="pooled"),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic_hw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 1, 1])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.uniform(0, 1, (8, 3, 32, 32)).astype(np.float32)
    int8 = quantize_int8(proto, Dataset({"x": x}, None, "x"), Int8Config(exclude=["pooled"]))
    coverage = onnx_int8_coverage(int8, {"x": x[:1]})
    full, pooled = 32 * 32 * 8 * 27, 16 * 8
    assert coverage.float_ops == {"Conv": 1} and coverage.macs == pytest.approx(full / (full + pooled), abs=1e-4)
    assert onnx_int8_coverage(int8).macs == pytest.approx(27 * 8 / (27 * 8 + pooled), abs=1e-4)  # no sample: 1×1
