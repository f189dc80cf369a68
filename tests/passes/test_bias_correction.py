"""Bias correction of int8 Q/DQ graphs (passes/bias_correction.py), on a Conv and a Gemm whose weights all round
the same way, so quantization shifts every output channel's mean: the correction must remove that shift (measured
on samples it was not computed on) without touching anything else."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deployc.core.ort import session
from deployc.data.dataset import Dataset
from deployc.passes.bias_correction import correct_biases
from deployc.passes.onnx_util import op_counts
from deployc.passes.quantize import Int8Config, quantize_int8
from deployc.passes.tensorrt_qdq import place, quantize_placed

IN, OUT = 64, 32


def _biased_weight(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Weights that sit 0.4 of a quantization step above an int8 level (each row's largest value is exactly
    127 steps), so rounding lowers every one of them: a mean shift of 0.4 · step · Σx per output channel."""
    w = rng.integers(-100, 100, shape).astype(np.float64) + 0.4
    flat = w.reshape(shape[0], -1)
    flat[:, 0] = 127.0
    return (w * 0.01).astype(np.float32)


def _conv_model(rng: np.random.Generator) -> onnx.ModelProto:
    w = _biased_weight(rng, (OUT, IN, 1, 1))
    b = rng.normal(0, 0.1, OUT).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", IN, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", OUT, 4, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _gemm_model(rng: np.random.Generator) -> onnx.ModelProto:
    w = _biased_weight(rng, (OUT, IN))  # transB: [N, K]
    b = rng.normal(0, 0.1, OUT).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="gemm", transB=1)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", OUT])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _data(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)  # positive means: the weights' shift shows


def _mean_error(proto: onnx.ModelProto, ref: onnx.ModelProto, x: np.ndarray) -> tuple[float, float]:
    """(largest |mean error| over output channels, RMS error) against the float model on `x`."""
    got, want = session(proto).run(None, {"x": x})[0], session(ref).run(None, {"x": x})[0]
    axes = tuple(a for a in range(got.ndim) if a != 1)
    err = got.astype(np.float64) - want
    return float(np.abs(err.mean(axis=axes)).max()), float(np.sqrt((err**2).mean()))


@pytest.mark.parametrize("build,shape", [(_conv_model, (IN, 4, 4)), (_gemm_model, (IN,))])
def test_bias_correction_removes_the_mean_shift_of_int8(build, shape):
    rng = np.random.default_rng(0)
    fp32 = build(rng)
    calib = Dataset({"x": _data(rng, (64, *shape))}, None, "uniform")
    held_out = _data(rng, (64, *shape))
    plain = quantize_int8(fp32, calib, Int8Config(bias_correction=False, reduce_range=False))
    corrected = quantize_int8(fp32, calib, Int8Config(reduce_range=False))
    assert op_counts(corrected) == op_counts(plain)  # only bias values change
    shift_before, rms_before = _mean_error(plain, fp32, held_out)
    shift_after, rms_after = _mean_error(corrected, fp32, held_out)
    assert shift_before > 0.05  # the construction works: rounding shifted every channel
    assert shift_after < shift_before / 5
    assert rms_after < rms_before * 0.8
    onnx.checker.check_model(corrected)


def test_bias_correction_on_tensorrt_float_biases():
    rng = np.random.default_rng(1)
    fp32 = _conv_model(rng)
    calib = Dataset({"x": _data(rng, (64, IN, 4, 4))}, None, "uniform")
    quantized, _ = quantize_placed(fp32, place(fp32, set()), calib, "minmax", True, 64, 16)
    corrected, info = correct_biases(quantized, fp32, calib)
    assert info.corrected == ("conv",) and not info.skipped
    before, after = (
        numpy_helper.to_array(next(i for i in p.graph.initializer if i.name == "b")) for p in (quantized, corrected)
    )
    assert not np.allclose(before, after)  # the float bias itself moved (no int32 bias on this placement)
    held_out = _data(rng, (64, IN, 4, 4))
    assert _mean_error(corrected, fp32, held_out)[0] < _mean_error(quantized, fp32, held_out)[0] / 5


def test_bias_correction_reports_ops_it_cannot_correct():
    rng = np.random.default_rng(2)
    w = _biased_weight(rng, (IN, OUT))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],  # no bias after it
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", OUT])],
        [numpy_helper.from_array(w, "w")],
    )
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = Dataset({"x": _data(rng, (32, IN))}, None, "uniform")
    plain = quantize_int8(fp32, calib, Int8Config(bias_correction=False, reduce_range=False))
    out, info = correct_biases(plain, fp32, calib)
    assert out is plain and info.corrected == () and "no bias" in info.skipped["matmul"]


@pytest.mark.parametrize("held", [True, False])
def test_a_second_correction_runs_the_float_graph_only_for_what_it_cannot_reuse(held, monkeypatch):
    """Sums of an input quantizer seen before are reused; a new input scale (symmetric activations) is measured from
    the float inputs the first run kept when they fit a quarter of the memory budget (no second run), else by a
    second run; either way the bytes are those of a correction from scratch."""
    from deployc.core import memory
    from deployc.passes import activations, bias_correction

    rng = np.random.default_rng(3)
    fp32 = _conv_model(rng)
    calib = Dataset({"x": _data(rng, (48, IN, 4, 4))}, None, "uniform")
    runs = []
    real = bias_correction.session
    monkeypatch.setattr(bias_correction, "session", lambda *a, **k: runs.append(1) or real(*a, **k))
    monkeypatch.setattr(bias_correction, "_SUMS", {})
    monkeypatch.setattr(bias_correction, "_HELD", {})
    spec = Int8Config(bias_correction=False, reduce_range=False)
    per_channel, per_tensor, symmetric = (
        quantize_int8(fp32, calib, spec.model_copy(update=u))
        for u in ({"per_channel": True}, {"per_channel": False}, {"symmetric_activations": True})
    )
    inputs = 48 * IN * 4 * 4 * 4  # bytes of the one Conv's float input over the samples
    memory.release(activations._KEPT_OWNER)  # nothing else kept (a calibration pass may keep its values)
    budget = memory.Budget(memory.KEEP_SHARE * (inputs if held else inputs - 1), "test")
    with memory.applied(budget):
        first, _ = correct_biases(per_channel, fp32, calib)
        cold_per_tensor, _ = correct_biases(per_tensor, fp32, calib)  # the same input quantizer: its sums are reused
        assert len(runs) == 1
        assert memory.kept_bytes() == (inputs if held else 0)  # all of it bias correction's
        warm_symmetric, _ = correct_biases(symmetric, fp32, calib)  # another input scale: measured anew
        assert len(runs) == (1 if held else 2)
    monkeypatch.setattr(bias_correction, "_SUMS", {})
    monkeypatch.setattr(bias_correction, "_HELD", {})
    memory.release(bias_correction._OWNER)
    again, _ = correct_biases(per_tensor, fp32, calib)
    assert again.SerializeToString() == cold_per_tensor.SerializeToString()
    monkeypatch.setattr(bias_correction, "_SUMS", {})
    cold_symmetric, _ = correct_biases(symmetric, fp32, calib)
    assert cold_symmetric.SerializeToString() == warm_symmetric.SerializeToString()
    assert first.SerializeToString() != cold_per_tensor.SerializeToString()  # the trials did differ
    memory.release(bias_correction._OWNER)


def test_sums_measured_side_by_side_give_the_bytes_of_one_sum_at_a_time(monkeypatch):
    """The corrected inputs' sums are measured on the machine's cores at once (activations.side_by_side): the same
    bytes as one input after another, as each sum is its own."""
    from deployc.passes import activations, bias_correction

    rng = np.random.default_rng(4)
    fp32 = _two_conv_model(rng)
    calib = Dataset({"x": _data(rng, (40, IN, 4, 4))}, None, "uniform")
    plain = quantize_int8(fp32, calib, Int8Config(bias_correction=False, reduce_range=False))
    monkeypatch.setattr(bias_correction, "_SUMS", {})
    monkeypatch.setattr(bias_correction, "_HELD", {})
    side, info = correct_biases(plain, fp32, calib, batch=16)
    assert len(info.corrected) == 2
    monkeypatch.setattr(bias_correction, "_SUMS", {})
    monkeypatch.setattr(bias_correction, "_HELD", {})
    monkeypatch.setattr(activations, "_MOST_WORKERS", 1)
    alone, _ = correct_biases(plain, fp32, calib, batch=16)
    assert alone.SerializeToString() == side.SerializeToString()
    assert alone.SerializeToString() != plain.SerializeToString()


def _two_conv_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Two Convs in a row: two corrected inputs, whose sums are measured side by side."""
    w1, w2 = _biased_weight(rng, (IN, IN, 1, 1)), _biased_weight(rng, (OUT, IN, 1, 1))
    b1, b2 = rng.normal(0, 0.1, IN).astype(np.float32), rng.normal(0, 0.1, OUT).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2"),
        ],
        "two_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", IN, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", OUT, 4, 4])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    "shape,axis,chunk",
    [
        ((5, 7, 9, 11), 1, 64),  # several rows a chunk
        ((3, 6, 50), 1, 64),  # one row is bigger than a chunk: channel blocks
        ((2, 3, 200), 1, 64),  # one channel is bigger than a chunk
        ((40, 13), 1, 1 << 18),  # Gemm input: features last
    ],
)
def test_channel_sums_give_the_per_value_sums_of_q_minus_x(shape, axis, chunk, monkeypatch):
    """The per-channel sum of Q(x) - x, from the integer levels' sums (_channel_sums), equals the sum of Q(x) - x
    taken value by value in float64, and the levels round half to even and clip as QuantizeLinear does."""
    from deployc.passes import bias_correction as bc

    monkeypatch.setattr(bc, "CHUNK", chunk)
    rng = np.random.default_rng(4)
    x = (rng.normal(0, 2, shape) * 4).round() / 4  # many values on a rounding tie (x/scale = k + 0.5)
    x = x.astype(np.float32)
    scale, zp = np.asarray(0.5, np.float64), np.asarray(3.0)
    q = (scale, zp, 0, 15)  # a narrow range: both ends clip
    reduce = tuple(a for a in range(x.ndim) if a != axis)
    x64 = x.astype(np.float64)
    want = ((np.clip(np.round(x64 / scale) + zp, 0, 15) - zp) * scale - x64).sum(axis=reduce)
    x_sum = bc._channel_sums(x, axis, None)
    got = bc._channel_sums(x, axis, q) * scale - x_sum
    np.testing.assert_allclose(x_sum, x64.sum(axis=reduce), rtol=1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
    assert np.abs(want).max() > 1.0  # clipping makes the error large: the check is not trivially met
    levels = bc._channel_sums(x, axis, q)
    assert np.array_equal(levels, np.round(levels))  # integer level sums, exact in float64


def test_a_bias_shared_by_several_ops_moves_once():
    """Three MatMul + Add reading one weight and one float bias (a decoder's GRU unrolled per step, its copies
    deduplicated): the bias absorbs the shift once, not once per reader (which overshoots by the readers' count)."""
    rng = np.random.default_rng(4)
    w = _biased_weight(rng, (OUT, IN)).T.copy()  # MatMul: [K, N], each output column's largest value 127 steps
    b = rng.normal(0, 0.1, OUT).astype(np.float32)
    nodes = []
    for k in range(3):
        nodes += [
            helper.make_node("MatMul", ["x", "w"], [f"m{k}"], name=f"matmul{k}"),
            helper.make_node("Add", [f"m{k}", "b"], [f"y{k}"], name=f"add{k}"),
        ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", IN])],
        [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, ["n", OUT]) for k in range(3)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = Dataset({"x": _data(rng, (64, IN))}, None, "uniform")
    plain, _ = quantize_placed(fp32, place(fp32, set()), calib, "minmax", True, 64, 16)
    corrected, info = correct_biases(plain, fp32, calib)
    assert sorted(info.corrected) == ["matmul0", "matmul1", "matmul2"], info.skipped
    held_out = _data(rng, (64, IN))
    shift_before, shift_after = _mean_error(plain, fp32, held_out)[0], _mean_error(corrected, fp32, held_out)[0]
    assert shift_before > 0.05 and shift_after < shift_before / 5, (shift_before, shift_after)


def test_the_float_run_fits_the_memory_budget_or_names_bias_correction():
    """The float run returns every corrected op's input at once: its batch comes from the memory budget; under a
    budget below one sample the stage says so, by name, instead of running at its own batch."""
    from deployc.core import memory

    rng = np.random.default_rng(4)
    fp32 = _conv_model(rng)
    calib = Dataset({"x": _data(rng, (48, IN, 4, 4))}, None, "uniform")
    qdq = quantize_int8(fp32, calib, Int8Config(bias_correction=False, reduce_range=False))
    reference, _ = correct_biases(qdq, fp32, calib)
    with memory.applied(memory.Budget(64, "test")), pytest.raises(memory.MemoryBudgetExceeded, match="bias correction"):
        correct_biases(qdq, fp32, calib)
    assert reference.SerializeToString() != qdq.SerializeToString()
