"""LSTM/GRU rewritten into MatMuls + gate math (passes/recurrent_int8.py), unrolled or as a hoisted input projection
+ Scan (passes/recurrent_scan.py): the same numbers as onnxruntime's own LSTM/GRU kernels, no recurrent node left,
and gate MatMuls that the int8 quantizers (onnx, tensorrt) make int8."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deployc.core.ort import session
from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.passes.coverage import onnx_int8_coverage
from deployc.passes.export import export_onnx
from deployc.passes.onnx_util import op_counts
from deployc.passes.quantize import Int8Config, quantize_int8_selected
from deployc.passes.recurrent_calibration import calibrated
from deployc.passes.recurrent_int8 import unroll_recurrent
from deployc.passes.tensorrt_qdq import place

STEPS, FEATURES, HIDDEN = 10, 12, 32


class Recurrent(nn.Module):
    def __init__(self, kind: str, bidirectional: bool):
        super().__init__()
        self.rnn = getattr(nn, kind)(FEATURES, HIDDEN, 2, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(HIDDEN * (2 if bidirectional else 1), 5)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


def _proto(kind: str, bidirectional: bool) -> onnx.ModelProto:
    torch.manual_seed(0)
    module = Recurrent(kind, bidirectional).eval()
    return export_onnx(module, ModelState(inputs=(TensorSpec("x", ("batch", STEPS, FEATURES)),)))


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, STEPS, FEATURES)).astype(np.float32)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_unrolled_graph_computes_what_the_recurrent_node_does(kind, bidirectional):
    proto = _proto(kind, bidirectional)
    unrolled = unroll_recurrent(proto, "unroll")
    counts = op_counts(unrolled.proto)
    assert kind not in counts and len(unrolled.rewritten) == 2 and not unrolled.kept
    dirs = 2 if bidirectional else 1
    # per layer and direction: one input projection + one recurrent MatMul per step (GRU with torch's
    # linear_before_reset: one; the first step has a recurrent MatMul too, on the zero initial state torch passes)
    assert len(unrolled.matmuls) == 2 * dirs * (1 + STEPS)
    x = _x(3)
    want, got = session(proto).run(None, {"x": x})[0], session(unrolled.proto).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    onnx.checker.check_model(unrolled.proto)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_static_int8_runs_the_gate_matmuls_in_int8(kind):
    proto = _proto(kind, False)
    calib = Dataset({"x": _x(64, 1)}, None, "normal")
    result = quantize_int8_selected(proto, calib, Int8Config(reduce_range=False, recurrent="unroll"))
    quantized = result.proto
    assert result.recurrent is not None and len(result.recurrent.rewritten) == 2
    coverage = onnx_int8_coverage(quantized)
    assert coverage.macs == 1.0 and coverage.float_ops == {}
    counts = op_counts(quantized)
    # only the MatMuls' inputs are quantized: the gate math (Sigmoid/Tanh/Mul) reads no DequantizeLinear
    producer = {o: n.op_type for n in quantized.graph.node for o in n.output}
    gate_math = [n for n in quantized.graph.node if n.op_type in ("Sigmoid", "Tanh")]
    assert gate_math and not any(producer.get(i) == "DequantizeLinear" for n in gate_math for i in n.input)
    assert counts["QuantizeLinear"] >= 2 * (1 + STEPS)
    x = _x(32, 2)
    want, got = session(proto).run(None, {"x": x})[0], session(quantized).run(None, {"x": x})[0]
    cosine = float((want * got).sum() / np.linalg.norm(want) / np.linalg.norm(got))
    assert cosine > 0.98, cosine


def test_tensorrt_placement_quantizes_the_unrolled_gate_matmuls():
    unrolled = unroll_recurrent(_proto("LSTM", False), "unroll")
    placement = place(unrolled.proto, set())
    recurrent = {m for m in unrolled.matmuls if "_hR" in m}
    assert len(recurrent) == 2 * STEPS and recurrent <= set(placement.weighted)
    # the first layer's input projection has K = 12 features: below TensorRT's int8 GEMM shapes, as for any MatMul
    assert "below 16" in placement.kept["node_LSTM_67/unrolled/d0_x_proj_1"]


def test_a_recurrent_node_of_unknown_length_is_kept_with_the_reason():
    proto = _proto("GRU", False)
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "time"
    del proto.graph.value_info[:]
    unrolled = unroll_recurrent(proto, "unroll")
    assert unrolled.proto is proto and not unrolled.rewritten
    assert all(why.startswith("its sequence length is not fixed") for why in unrolled.kept.values())


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_recurrent_float_keeps_every_node_whole_with_the_switch_named(kind):
    proto = _proto(kind, False)
    calib = Dataset({"x": _x(64, 1)}, None, "normal")
    result = quantize_int8_selected(proto, calib, Int8Config(reduce_range=False, recurrent="float"))
    assert op_counts(result.proto)[kind] == 2 and result.recurrent is not None and not result.recurrent.rewritten
    assert len(result.recurrent.kept) == 2
    assert all(why.startswith("quantize.recurrent: float") for why in result.recurrent.kept.values())
    assert onnx_int8_coverage(result.proto).float_ops == {kind: 2}


def _body(scan: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in scan.attribute if a.name == "body")


def _gru_node_proto(linear_before_reset: int) -> onnx.ModelProto:
    """A bare ONNX GRU (torch always exports linear_before_reset=1; the operator's default is 0), reverse."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (1, 3 * HIDDEN, FEATURES)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.normal(0, 0.3, (1, 3 * HIDDEN, HIDDEN)).astype(np.float32), "R")
    b = numpy_helper.from_array(rng.normal(0, 0.3, (1, 6 * HIDDEN)).astype(np.float32), "B")
    node = helper.make_node(
        "GRU",
        ["x", "W", "R", "B"],
        ["y", "y_h"],
        name="gru",
        hidden_size=HIDDEN,
        direction="reverse",
        linear_before_reset=linear_before_reset,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [STEPS, "batch", FEATURES])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y_h")],
        [w, r, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_scan_form_computes_what_the_recurrent_node_does(kind, bidirectional):
    """Float bodies: exact; int8 bodies: one hoisted input projection and one Scan per direction, each body with
    Q/DQ int8 recurrent MatMuls, close to the recurrent node."""
    proto = _proto(kind, bidirectional)
    dirs = 2 if bidirectional else 1
    x = _x(3)
    want = session(proto).run(None, {"x": x})[0]
    float_body = unroll_recurrent(proto, "scan", int8_body=False)
    np.testing.assert_allclose(session(float_body.proto).run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-5)
    scan = unroll_recurrent(proto, "scan")
    onnx.checker.check_model(scan.proto, full_check=True)
    counts = op_counts(scan.proto)
    assert kind not in counts and counts["Scan"] == 2 * dirs and len(scan.matmuls) == 2 * dirs  # hoisted: 1 each
    for node in (n for n in scan.proto.graph.node if n.op_type == "Scan"):
        body = op_counts(onnx.ModelProto(graph=_body(node)))
        assert body["MatMul"] == 1 and body["QuantizeLinear"] == 1 and body["DequantizeLinear"] == 2
    got = session(scan.proto).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=0.01)


@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_scan_form_of_a_reverse_gru_with_either_reset(linear_before_reset):
    proto = _gru_node_proto(linear_before_reset)
    x = np.random.default_rng(4).standard_normal((STEPS, 2, FEATURES)).astype(np.float32)
    want = session(proto).run(None, {"x": x})
    exact = unroll_recurrent(proto, "scan", int8_body=False).proto
    for got, ref in zip(session(exact).run(None, {"x": x}), want):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    scan = unroll_recurrent(proto, "scan", signed=True).proto  # TensorRT's int8: zero point 0
    (node,) = [n for n in scan.graph.node if n.op_type == "Scan"]
    assert op_counts(onnx.ModelProto(graph=_body(node)))["MatMul"] == 2 - linear_before_reset  # (r ⊙ H)·Rh apart
    for got, ref in zip(session(scan).run(None, {"x": x}), want):
        np.testing.assert_allclose(got, ref, atol=0.02)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_static_int8_of_the_scan_form(kind, tmp_path):
    """quantize_int8 (default quantize.recurrent: scan): every MAC int8 (the body's counted once per step), the
    gate math float, onnxruntime fusing the body's Q/DQ MatMul into MatMulIntegerToFloat."""
    import onnxruntime as ort

    proto = _proto(kind, False)
    calib = Dataset({"x": _x(64, 1)}, None, "normal")
    result = quantize_int8_selected(proto, calib, Int8Config(reduce_range=False))
    quantized = result.proto
    assert result.recurrent is not None and result.recurrent.to_json()["scan_body_matmuls"] == 2
    coverage = onnx_int8_coverage(quantized, {"x": _x(1)})
    assert coverage.macs == 1.0 and coverage.float_ops == {}
    x = _x(32, 2)
    want, got = session(proto).run(None, {"x": x})[0], session(quantized).run(None, {"x": x})[0]
    cosine = float((want * got).sum() / np.linalg.norm(want) / np.linalg.norm(got))
    assert cosine > 0.98, cosine
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(quantized.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    bodies = [_body(n) for n in optimized.graph.node if n.op_type == "Scan"]
    assert len(bodies) == 2
    for body in bodies:
        ops = op_counts(onnx.ModelProto(graph=body))
        assert ops.get("MatMulIntegerToFloat") == 1 and "MatMul" not in ops and "Gemm" not in ops, ops


class StepwiseDecoder(nn.Module):
    """One GRU called once per output step (as g2p's greedy decoder): one-step GRU nodes sharing their weights."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(FEATURES, HIDDEN, batch_first=True)

    def forward(self, x):
        h, outs = None, []
        for t in range(3):
            y, h = self.gru(x[:, t : t + 1], h)
            outs.append(y)
        return torch.cat(outs, 1)


def test_one_step_nodes_sharing_weights_keep_one_copy():
    torch.manual_seed(0)
    proto = export_onnx(StepwiseDecoder().eval(), ModelState(inputs=(TensorSpec("x", ("batch", STEPS, FEATURES)),)))
    calib = Dataset({"x": _x(16, 1)}, None, "normal")
    result = quantize_int8_selected(proto, calib, Int8Config(reduce_range=False))
    assert result.recurrent is not None and len(result.recurrent.rewritten) == 3
    assert "scan_body_matmuls" not in result.recurrent.to_json()  # one step each: unrolled, no Scan
    int8_weights = [i for i in result.proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and i.dims]
    shapes = sorted(tuple(i.dims) for i in int8_weights if len(i.dims) == 2)
    assert shapes == [(FEATURES, 3 * HIDDEN), (HIDDEN, 3 * HIDDEN)], shapes  # W and R once, not once per step
    x = _x(8, 2)
    want, got = session(proto).run(None, {"x": x})[0], session(result.proto).run(None, {"x": x})[0]
    assert float((want * got).sum() / np.linalg.norm(want) / np.linalg.norm(got)) > 0.99


def _quiet_lstm() -> onnx.ModelProto:
    """An LSTM whose output gates stay nearly shut (bias -3: o ≈ 0.05), so |H| = |o ⊙ tanh(c)| uses a tenth of
    [-1, 1], as speaker/pitch LSTMs' states often do; the recurrent weights are large, so H's rounding matters."""
    torch.manual_seed(0)
    module = Recurrent("LSTM", False).eval()
    with torch.no_grad():
        for layer in range(2):
            getattr(module.rnn, f"weight_hh_l{layer}").mul_(8)
            getattr(module.rnn, f"bias_ih_l{layer}")[3 * HIDDEN :].fill_(-3.0)  # torch's gate order i, f, g, o
    return export_onnx(module, ModelState(inputs=(TensorSpec("x", ("batch", STEPS, FEATURES)),)))


def test_state_ranges_from_calibration_cut_the_recurrent_int8_error():
    """recurrent_calibration: each Scan body quantizes H on the range H reaches on the calibration samples, not on
    [-1, 1]; on an LSTM whose states stay within ±0.1 the int8 bodies' error drops at least 4×."""
    proto = _quiet_lstm()
    calib = Dataset({"x": _x(64, 1)}, None, "normal")
    fixed = unroll_recurrent(proto, "scan")
    measured = calibrated(fixed, calib, 16, signed=False)
    assert len(measured.state_ranges) == 2 and all(0.005 < m < 0.2 for m in measured.state_ranges.values())
    assert measured.to_json()["scan_state_ranges"] == measured.state_ranges
    x = _x(32, 2)
    want = session(proto).run(None, {"x": x})[0]
    errors = [np.abs(session(u.proto).run(None, {"x": x})[0] - want).mean() for u in (fixed, measured)]
    assert errors[1] < errors[0] / 4, errors
    onnx.checker.check_model(measured.proto, full_check=True)


def test_recurrent_calibration_meets_the_memory_budget_and_runs_once_for_every_trial(monkeypatch):
    """The recurrent calibration streams through the memory budget (a budget below one sample is refused naming the
    stage, never run at the requested batch) and measures a graph and its samples once: every remedy trial asks
    again for the same graph and samples."""
    from deployc.core import memory
    from deployc.passes import activations, recurrent_calibration

    fixed = unroll_recurrent(_quiet_lstm(), "scan")
    calib = Dataset({"x": _x(64, 1)}, None, "normal")
    with memory.applied(memory.Budget(1024, "test")), pytest.raises(memory.MemoryBudgetExceeded) as err:
        calibrated(fixed, calib, 16, signed=False)
    assert "recurrent calibration" in str(err.value)
    runs = []
    real = activations.streamed
    monkeypatch.setattr(activations, "streamed", lambda *a, **k: runs.append(1) or real(*a, **k))
    monkeypatch.setattr(recurrent_calibration, "_MEMO", {})
    first, again = calibrated(fixed, calib, 16, signed=False), calibrated(fixed, calib, 16, signed=False)
    assert runs == [1] and first.state_ranges == again.state_ranges


@pytest.mark.parametrize("signed", [False, True])
def test_the_fixed_state_range_holds_both_ends_exactly(signed):
    """A saturated unit sits at ±1 on every step: uint8 H (onnxruntime) as int8 around 127 with step 1/127 keeps
    -1, 0 and +1 exact (2/255 around 128 rounded +1 to 0.996 on every step), as TensorRT's int8 around 0 does."""
    from onnx import numpy_helper

    scan = next(
        n for n in unroll_recurrent(_proto("GRU", False), "scan", signed=signed).proto.graph.node if n.op_type == "Scan"
    )
    inits = {i.name.rsplit("/", 1)[-1]: numpy_helper.to_array(i) for i in _body(scan).initializer}
    scale, zero = float(inits["h_scale"]), int(inits["h_zero"])
    lo, hi = (-128, 127) if signed else (0, 255)
    h = np.array([-1.0, 0.0, 1.0])
    np.testing.assert_allclose((np.clip(np.round(h / scale) + zero, lo, hi) - zero) * scale, h, atol=1e-6)


def _skewed(n: int, seed: int) -> np.ndarray:
    """Spectrum-like frames: feature j's scale falls 800× across the features, most values near zero in each."""
    rng = np.random.default_rng(seed)
    scale = np.geomspace(1.0, 1 / 800, FEATURES)
    return (rng.exponential(1.0, (n, STEPS, FEATURES)) ** 3 * scale / 20).astype(np.float32)


def test_a_projection_whose_input_int8_rounds_away_stays_float(monkeypatch):
    """A first LSTM reading spectrum-like inputs (most values below half a uint8 step): its hoisted projection
    stays float, with the reason, and the int8 model's error drops; the second layer's projection (reading H)
    stays int8."""
    torch.manual_seed(0)
    module = Recurrent("LSTM", False).eval()
    with torch.no_grad():
        module.rnn.weight_ih_l0.mul_(torch.from_numpy(np.geomspace(1.0, 100.0, FEATURES)).float())
    proto = export_onnx(module, ModelState(inputs=(TensorSpec("x", ("batch", STEPS, FEATURES)),)))
    calib = Dataset({"x": _skewed(64, 1)}, None, "spectra")
    result = quantize_int8_selected(proto, calib, Int8Config(reduce_range=False))
    floats = result.recurrent.float_projections
    assert len(floats) == 1 and "round" in next(iter(floats.values())), floats
    assert len(result.recurrent.projections) == 2
    assert result.recurrent.to_json()["float_projections"] == floats
    coverage = onnx_int8_coverage(result.proto, {"x": _skewed(1, 3)})
    assert 0.8 < coverage.macs < 1.0
    x = _skewed(32, 2)
    want = session(proto).run(None, {"x": x})[0]
    from deployc.passes import recurrent_calibration

    monkeypatch.setattr(recurrent_calibration, "DEAD_ZONE", 1.0)  # never float: every projection int8
    all_int8 = quantize_int8_selected(proto, calib, Int8Config(reduce_range=False)).proto
    errors = [np.abs(session(p).run(None, {"x": x})[0] - want).mean() for p in (result.proto, all_int8)]
    assert errors[0] < errors[1] / 2, errors  # 6.4e-4 against 1.8e-3
