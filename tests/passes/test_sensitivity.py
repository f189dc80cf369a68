"""Per-layer sensitivity and the channel-range warning, on the quantization-hostile digits model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.examples.quant_hostile import hostile
from deployc.passes.export import export_onnx
from deployc.passes.quantize import Int8Config, quantize_int8
from deployc.passes.quantize_checks import channel_range_warnings
from deployc.passes.sensitivity import activation_errors, channel_nmse, damage, fallback_units, single_layer_errors
from deployc.passes.simplify import simplify_proto


@pytest.fixture(scope="module")
def hostile_proto() -> onnx.ModelProto:
    return simplify_proto(export_onnx(hostile(), ModelState(inputs=(TensorSpec("image", ("batch", 1, 8, 8)),))))


@pytest.fixture(scope="module")
def calib() -> Dataset:
    x, y = digits_arrays("train")
    return Dataset({"image": x[:64]}, y[:64], "digits:train")


def _node(proto: onnx.ModelProto, weight: str) -> str:
    return next(n.name for n in proto.graph.node if f"{weight}.weight" in n.input)


def test_channel_nmse_sees_a_crushed_small_channel():
    ref = np.random.default_rng(0).uniform(0, 1, (8, 4, 3, 3))
    ref[:, 0] *= 1000
    got = ref.copy()
    got[:, 1:] = 0  # what per-tensor int8 does to the small channels
    global_nmse = ((ref - got) ** 2).sum() / (ref**2).sum()
    assert global_nmse < 1e-5
    assert channel_nmse(ref, got) == pytest.approx(0.75)
    assert channel_nmse(ref, ref) == 0.0


def test_single_layer_sensitivity_ranks_the_hostile_pair_first(hostile_proto, calib):
    errors = single_layer_errors(hostile_proto, calib, lambda p, only: quantize_int8(p, calib, Int8Config(), only=only))
    top = {e.node for e in errors[:2]}
    assert top == {_node(hostile_proto, "spread"), _node(hostile_proto, "squeeze")}
    assert errors[1].error > 1000 * errors[2].error  # the rest of the model quantizes harmlessly
    assert {"(spread)", "(squeeze)"} <= {e.layer[e.layer.index("(") :] for e in errors[:2]}


def test_activation_errors_zero_for_the_same_graph_and_high_downstream_of_the_trap(hostile_proto, calib):
    same = activation_errors(hostile_proto, hostile_proto, calib)
    assert same and all(e.error == 0 for e in same)
    errors = {
        e.node: e for e in activation_errors(hostile_proto, quantize_int8(hostile_proto, calib, Int8Config()), calib)
    }
    stem, spread = _node(hostile_proto, "stem.0"), _node(hostile_proto, "spread")
    assert errors[stem].error < 1e-3  # before the outlier channel, int8 is fine
    assert errors[spread].added > 0.5  # the per-tensor step wipes out 15 of 16 channels here


def test_channel_range_warning_names_the_layer(hostile_proto, calib, digits_onnx):
    q = quantize_int8(hostile_proto, calib, Int8Config())
    warnings = channel_range_warnings(hostile_proto, q, calib, ratio=100)
    assert len(warnings) == 1 and "(spread)" in warnings[0] and "per-tensor" in warnings[0]
    benign = onnx.load(str(digits_onnx))
    assert channel_range_warnings(benign, quantize_int8(benign, calib, Int8Config()), calib, ratio=100) == []


def test_fallback_units_put_the_outlier_tensors_writer_and_reader_first(hostile_proto, calib):
    units = fallback_units(hostile_proto, quantize_int8(hostile_proto, calib, Int8Config()), calib)
    assert set(units[0]) == {_node(hostile_proto, "spread"), _node(hostile_proto, "squeeze")}  # one group, one trial
    names = [n for u in units for n in u]
    assert len(names) == len(set(names)) and len(units) >= 5  # each node in one group; the rest ranked after


def test_damage_is_relative_once_error_has_arrived():
    assert damage(0.9, 1e-4) > 100 * damage(1e5, 2e4)  # the layer that crushed the signal, not the one downstream
    assert damage(2e-4, 1e-4) == pytest.approx(1e-4 / 1.1e-3)  # small errors count about absolutely


def test_streamed_activation_errors_equal_one_run_on_every_sample(hostile_proto, calib):
    """The ranking accumulates per-channel sums batch by batch; a budget of two samples gives the same errors as
    the whole-batch channel_nmse over every layer output held at once."""
    from deployc.core import memory
    from deployc.passes.activations import per_sample_bytes
    from deployc.passes.sensitivity import _consumer_view, _float_outputs, layer_outputs

    int8 = quantize_int8(hostile_proto, calib, Int8Config(samples=64, per_channel=False))
    names = [t for t in _float_outputs(hostile_proto) if t in {o for n in int8.graph.node for o in n.output}]
    seen = _consumer_view(int8)
    ref, got = layer_outputs(hostile_proto, names, calib), layer_outputs(int8, sorted({seen[t] for t in names}), calib)
    whole = {t: channel_nmse(ref[t], got[seen[t]]) for t in names}
    need = per_sample_bytes(hostile_proto, names, calib, scratch=4) + per_sample_bytes(int8, list(seen.values()), calib)
    with memory.applied(memory.Budget(2 * need, "test")):
        streamed = {e.node: e.error for e in activation_errors(hostile_proto, int8, calib)}
    producer = {o: n.name for n in hostile_proto.graph.node for o in n.output}
    compared = [t for t in names if producer[t] in streamed]
    assert len(compared) >= 5
    for t in compared:
        assert streamed[producer[t]] == pytest.approx(whole[t], rel=1e-9, abs=1e-15), t


def test_squared_sums_in_chunks_equal_the_whole_batch_sums(monkeypatch):
    """The ranking's per-channel sums, a chunk of rows at a time in float64, are the whole batch's sums."""
    import numpy as np

    from deployc.passes import sensitivity

    monkeypatch.setattr(sensitivity, "CHUNK", 100)  # several chunks, and rows bigger than one
    rng = np.random.default_rng(5)
    for shape in [(7, 3, 5, 4), (4, 30, 9), (9, 6)]:
        ref = rng.normal(size=shape).astype(np.float32)
        got = (ref + rng.normal(size=shape) * 0.01).astype(np.float32)
        r64, g64 = ref.astype(np.float64), got.astype(np.float64)
        axes = tuple(i for i in range(ref.ndim) if i != 1)
        err, power = sensitivity._squared_sums(ref, got)
        np.testing.assert_allclose(err, ((r64 - g64) ** 2).sum(axis=axes), rtol=1e-12)
        np.testing.assert_allclose(power, (r64**2).sum(axis=axes), rtol=1e-12)
