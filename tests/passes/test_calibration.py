"""Activation ranges shared between int8 passes (passes/calibration.py): one calibration of the build's float graph
serves every graph rewritten from it without new tensors, with the ranges that graph would get itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.passes import calibration
from deployc.passes.qdq_prep import quantizer_ready
from deployc.passes.tensorrt_qdq import named, place, quantize_placed


@pytest.fixture(scope="module")
def calib() -> Dataset:
    x, _ = digits_arrays("train")
    return Dataset({"image": x[:32]}, None, "image")


def _ranges(path: str) -> dict:
    return json.loads(Path(path).read_text())


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_a_rewritten_graph_is_served_the_roots_ranges_equal_to_its_own(digits_proto, calib, method, tmp_path):
    rewritten = quantizer_ready(named(digits_proto))
    before = len(calibration._MEMO)
    shared = _ranges(calibration.calibration_cache(digits_proto, rewritten, calib, method, 16, 99.99, tmp_path))
    again = _ranges(calibration.calibration_cache(digits_proto, digits_proto, calib, method, 16, 99.99, tmp_path))
    assert len(calibration._MEMO) == before + 1  # one calibration for both graphs
    assert shared == again
    own = _ranges(calibration.calibration_cache(rewritten, rewritten, calib, method, 16, 99.99, tmp_path))
    assert own == shared  # what the rewritten graph would get from its own calibration


def test_a_graph_with_a_tensor_the_root_lacks_is_calibrated_itself(digits_proto, calib, tmp_path):
    extra = named(digits_proto)
    out = extra.graph.output[0].name
    extra.graph.node.append(helper.make_node("Relu", [out], ["relu_extra"], name="relu_extra"))
    extra.graph.output[0].name = "relu_extra"
    before = len(calibration._MEMO)
    cache = _ranges(calibration.calibration_cache(digits_proto, extra, calib, "minmax", 16, 99.99, tmp_path))
    assert "relu_extra" in json.dumps(cache)
    assert len(calibration._MEMO) >= before + 1


def test_tensorrt_int8_bytes_do_not_depend_on_the_shared_root(digits_proto, calib):
    graph = quantizer_ready(named(digits_proto))
    placement = place(graph, set())
    via_root, _ = quantize_placed(graph, placement, calib, "minmax", True, 32, 16, root=digits_proto)
    alone, _ = quantize_placed(graph, placement, calib, "minmax", True, 32, 16)
    assert via_root.SerializeToString() == alone.SerializeToString()


def _box_and_score_head() -> onnx.ModelProto:
    """YOLOv8n's head in miniature: box pixels (0-320) and sigmoid class scores (0-1) in one Concat."""
    from onnx import TensorProto, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 16])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32)[:, :, None, None] * 1.0, "w")
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["x4"], name="unsq"),
        helper.make_node("Conv", ["x4", "w"], ["c4"], name="conv"),
        helper.make_node("Squeeze", ["c4", "axes"], ["c"], name="sq"),
        helper.make_node("Mul", ["c", "k"], ["boxes"], name="to_pixels"),
        helper.make_node("Sigmoid", ["c"], ["scores"], name="sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["y"], name="head_concat", axis=1),
    ]
    inits = [
        w,
        numpy_helper.from_array(np.array([3], np.int64), "axes"),
        numpy_helper.from_array(np.float32(80.0), "k"),
    ]
    graph = helper.make_graph(nodes, "head", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_concat_of_pixels_and_scores_stays_float_and_keeps_the_scores():
    from deployc.core.ort import session
    from deployc.passes.quantize import Int8Config, quantize_int8_selected

    proto = _box_and_score_head()
    x = np.random.default_rng(0).uniform(0, 4, (64, 4, 16)).astype(np.float32)
    data = Dataset({"x": x}, None, "x")
    result = quantize_int8_selected(proto, data, Int8Config(samples=64))
    assert list(result.concats_kept) == ["head_concat"]
    assert result.concats_kept["head_concat"].endswith("one int8 scale would leave it 1 of 255 levels")
    with_rule = session(result.proto.SerializeToString(), 1).run(None, {"x": x[:8]})[0][:, 4:]
    ref = 1 / (1 + np.exp(-x[:8]))
    assert np.abs(with_rule - ref).max() < 0.02  # scores keep their int8 Sigmoid resolution (1/255)
    # the same graph with the rule off (ratio above the mismatch): one scale for 0-320 and 0-1 zeroes the scores
    off = quantize_int8_selected(proto, data, Int8Config(samples=64, channel_range_ratio=10_000))
    assert off.concats_kept == {}
    without = session(off.proto.SerializeToString(), 1).run(None, {"x": x[:8]})[0][:, 4:]
    assert np.abs(without - ref).max() > 0.3


# ---- streaming statistics (memory budget) and onnxruntime's methods --------------------------------------------


def _stats_equal(a: calibration.Statistics, b: calibration.Statistics) -> None:
    assert set(a.tensors) == set(b.tensors)
    for name, s in a.tensors.items():
        t = b.tensors[name]
        assert (s.lo, s.hi) == (t.lo, t.hi), name
        assert (s.hist is None) == (t.hist is None) and (s.hist is None or np.array_equal(s.hist, t.hist)), name


def test_streamed_statistics_are_the_same_in_any_batch_size(digits_proto, calib):
    whole = calibration.collect(digits_proto, calib, True, batch=len(calib))
    for batch in (1, 5):
        _stats_equal(calibration.collect(digits_proto, calib, True, batch=batch), whole)
    assert sum(s.hist.sum() for s in whole.tensors.values() if s.hist is not None) > 0


def test_a_budget_of_three_samples_calibrates_three_at_a_time_with_the_same_ranges(digits_proto, calib):
    from deployc.core import memory
    from deployc.passes.activations import batch_size, per_sample_bytes

    names = calibration.calibrated_tensors(digits_proto)
    per_sample = per_sample_bytes(digits_proto, names, calib)
    whole = calibration.collect(digits_proto, calib, True)
    memory.drop_kept()  # the pass keeps the inputs a smoothing trial reads, which would take part of the budget
    with memory.applied(memory.Budget(3 * per_sample + 1, "test")):
        assert batch_size(per_sample, calib, "calibration") == 3
        _stats_equal(calibration.collect(digits_proto, calib, True), whole)
    with memory.applied(memory.Budget(per_sample - 1, "test")), pytest.raises(memory.MemoryBudgetExceeded) as err:
        calibration.collect(digits_proto, calib.take(30), True)
    assert "calibration needs" in str(err.value) and "one sample" in str(err.value)


def test_the_next_batch_runs_ahead_only_when_the_budget_holds_two(digits_proto, calib, monkeypatch):
    """Binning a batch overlaps the next batch's run (activations.run_ahead) when the budget has room for both
    batches' tensors; with room for one, batches run one at a time; the statistics are the same either way."""
    from deployc.core import memory
    from deployc.passes import activations
    from deployc.passes.activations import per_sample_bytes

    ahead: list[bool] = []
    real = activations.run_ahead

    def spied(batches):
        ahead.append(True)
        return real(batches)

    monkeypatch.setattr(calibration, "run_ahead", spied)
    memory.drop_kept()  # what an earlier test kept would take room
    names = calibration.calibrated_tensors(digits_proto)
    per_sample = per_sample_bytes(digits_proto, names, calib)
    whole = calibration.collect(digits_proto, calib, True, batch=len(calib))  # histograms only: minmax is onnxruntime's
    assert ahead == [True]
    with memory.applied(memory.Budget(5 * per_sample, "test")):  # batches of 5: one fits, two do not
        _stats_equal(calibration.collect(digits_proto, calib, True), whole)
    assert ahead == [True]
    memory.drop_kept()  # the pass keeps the inputs a smoothing trial reads: they take room too
    with memory.applied(memory.Budget(10 * per_sample, "test")):  # batches of 5 asked for: two fit
        _stats_equal(calibration.collect(digits_proto, calib, True, batch=5), whole)
    assert ahead == [True, True]


def test_run_ahead_computes_under_the_builds_memory_budget():
    """The worker thread sees the budget the build applied (a ContextVar), which sizes and guards its batches."""
    from deployc.core import memory
    from deployc.passes.activations import run_ahead

    def budgets():
        for _ in range(3):
            yield {"limit": np.array(memory.current().limit)}

    with memory.applied(memory.Budget(12345, "test")):
        assert [int(b["limit"]) for b in run_ahead(budgets())] == [12345] * 3


def test_run_ahead_yields_every_batch_in_order_and_raises_what_the_run_raised():
    from deployc.passes.activations import run_ahead

    got = list(run_ahead(iter([{"a": np.zeros(1)}, {"b": np.ones(2)}])))
    assert [list(g) for g in got] == [["a"], ["b"]] and got[1]["b"].tolist() == [1.0, 1.0]

    def failing():
        yield {"x": np.zeros(1)}
        raise MemoryError("batch 2")

    got = run_ahead(failing())
    assert next(got)["x"].shape == (1,)
    with pytest.raises(MemoryError, match="batch 2"):
        next(got)


def test_side_by_side_is_the_loop_in_order_under_the_callers_budget_and_raises_what_an_item_raised():
    from deployc.core import memory
    from deployc.passes.activations import side_by_side

    assert side_by_side(lambda x: x * x, range(50)) == [x * x for x in range(50)]
    with memory.applied(memory.Budget(4321, "test")):  # a worker thread sees the build's budget (a ContextVar)
        assert set(side_by_side(lambda _: memory.current().limit, range(8))) == {4321}

    def failing(x: int) -> int:
        if x == 3:
            raise MemoryError("item 3")
        return x

    with pytest.raises(MemoryError, match="item 3"):
        side_by_side(failing, range(6))


def test_histograms_measured_side_by_side_equal_those_measured_one_tensor_at_a_time(digits_proto, calib, monkeypatch):
    """A batch's tensors are binned on the machine's cores at once (activations.side_by_side); each tensor's
    statistics are its own, so they are bit for bit those of one tensor after another."""
    import os
    import threading

    from deployc.passes import activations

    threads: set[str] = set()
    real = calibration.TensorStats.add

    def spied(self, value, binner):
        threads.add(threading.current_thread().name)
        return real(self, value, binner)

    monkeypatch.setattr(calibration.TensorStats, "add", spied)
    side = calibration.collect(digits_proto, calib, True, batch=8)
    if len(os.sched_getaffinity(0)) > 1:
        assert any(t.startswith("deployc-tensors") for t in threads)
    monkeypatch.setattr(activations, "_MOST_WORKERS", 1)
    threads.clear()
    _stats_equal(calibration.collect(digits_proto, calib, True, batch=8), side)
    assert threads == {threading.current_thread().name}


def _onnxruntime_ranges(proto: onnx.ModelProto, data: Dataset, method: str, tmp_path: Path) -> dict:
    """onnxruntime's own calibrator, every sample in one batch (what it computes when nothing limits memory)."""
    import contextlib
    import io

    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    options = {"percentile": {"percentile": 99.99}, "entropy": {"num_bins": 2048, "num_quantized_bins": 128}}
    onnx.save(proto, tmp_path / "m.onnx")
    calibrator = create_calibrator(
        str(tmp_path / "m.onnx"),
        sorted({n.op_type for n in proto.graph.node}),
        augmented_model_path=str(tmp_path / "aug.onnx"),
        calibrate_method=getattr(CalibrationMethod, calibration.METHODS[method]),
        extra_options=options.get(method, {}),
    )
    batches = iter([dict(data.inputs)])
    reader = type("Reader", (), {"get_next": lambda self: next(batches, None)})()
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator.collect_data(reader)
        found = calibrator.compute_data()
    return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in found.data.items()}


# minmax is exact. percentile: our bins of |x| over [0, top] and onnxruntime's over [min|x|, max|x|] each put the
# threshold on a left edge below the percentile: one of its 2048 bins apart at most, and one of ours
TOLERANCE = {"minmax": 0.0, "percentile": 2 / 2048}


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_ranges_equal_onnxruntimes_calibrators_on_every_sample_at_once(digits_proto, calib, method, tmp_path):
    stats = calibration.collect(digits_proto, calib, method != "minmax", batch=4)
    ours = calibration._method_ranges(stats, method, 99.99)
    theirs = _onnxruntime_ranges(digits_proto, calib, method, tmp_path)
    assert set(ours) == set(theirs)
    for name, (lo, hi) in theirs.items():
        scale = stats.tensors[name].absmax
        assert abs(ours[name][0] - lo) <= TOLERANCE[method] * scale, (name, ours[name], (lo, hi))
        assert abs(ours[name][1] - hi) <= TOLERANCE[method] * scale, (name, ours[name], (lo, hi))


# onnxruntime's threshold is the argmin of the divergence over its exact 2048-bin histogram; ours is the argmin over
# counts interpolated from our finer bins. Where two thresholds nearly tie (tens of bins apart, seen on this CNN)
# the choice may flip: ours must be as good on onnxruntime's own histogram, within this share of the divergence.
KL_TOLERANCE = 0.05


def test_entropy_thresholds_are_as_good_as_onnxruntimes_on_its_own_histogram(digits_proto, calib):
    from deployc.passes.activations import streamed

    stats = calibration.collect(digits_proto, calib, True, batch=4)
    names = sorted(n for n, s in stats.tensors.items() if s.hist is not None)
    values = next(streamed(digits_proto, names, calib, "test", len(calib)))
    same = 0
    for name in names:
        s = stats.tensors[name]
        exact, _ = np.histogram(values[name].astype(np.float32), 2048, range=(-s.absmax, s.absmax))
        starts, _, kl = calibration.kl_divergences(exact, 128)
        start, _ = calibration.kl_threshold(calibration.entropy_histogram(s), 128)
        ours, best = kl[int(np.flatnonzero(starts == start)[0])], kl.min()
        assert ours <= best * (1 + KL_TOLERANCE), (name, ours, best)
        same += bool(ours == best)
    assert same >= len(names) * 2 // 3  # most pick onnxruntime's very threshold


@pytest.mark.parametrize("cuts", [[], [1], [3, 4], [1, 2, 3, 4, 5]])
def test_one_pass_histograms_are_the_counts_over_the_final_range_in_any_batching(cuts):
    """Bins merge as the range grows batch by batch (a zero-only batch, one tiny, one huge, NaN and inf): the
    counts are exactly those of binning every value at once over the power of two above the final max|x|."""
    rng = np.random.default_rng(0)
    parts = [np.zeros(500), rng.normal(0, 1e-3, 700), rng.laplace(0, 1, 900), rng.normal(3, 40, 600)]
    parts += [np.array([np.nan, np.inf, -7.0, 0.5]), rng.uniform(-0.01, 0.01, 400)]
    values = np.concatenate(parts).astype(np.float32)
    stats, binner = calibration.TensorStats(), calibration._Binner()
    for batch in np.split(values, [sum(len(p) for p in parts[:c]) for c in cuts]):
        stats.add(batch, binner)
    finite = values[np.isfinite(values)]
    top = calibration._power_above(float(np.abs(finite).max()))
    n = calibration.HIST_BINS
    index = np.floor(finite.astype(np.float64) * (n / (2 * top))).astype(np.int64) + n // 2
    assert stats.top == top == 128.0 and (stats.lo, stats.hi) == (float(finite.min()), float(finite.max()))
    assert np.array_equal(stats.hist, np.bincount(index, minlength=n))
    assert stats.hist.sum() == finite.size


def test_the_vectorised_kl_search_picks_onnxruntimes_threshold():
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    collector = HistogramCollector("entropy", False, 2048, 128, 99.99, "same")
    for shape in range(9):
        x = [rng.standard_normal(20_000), np.maximum(rng.standard_normal(20_000), 0), rng.laplace(size=20_000)][
            shape % 3
        ] * rng.uniform(0.1, 5)
        top = np.abs(x).max()
        hist, edges = np.histogram(x.astype(np.float32), 2048, range=(-top, top))
        start, end = calibration.kl_threshold(hist, 128)
        wide = (np.float32(-1e9), np.float32(1e9))  # no clipping to min/max: the search alone
        theirs = collector.get_entropy_threshold((hist, edges, *wide), 128)
        assert (edges[start], edges[end]) == (theirs[0], theirs[1])


def test_histogram_methods_share_one_pass_after_minmax(digits_proto, calib, tmp_path, monkeypatch):
    passes = []
    minmax, histogram = calibration._minmax_pass, calibration._histogram_pass
    monkeypatch.setattr(calibration, "_minmax_pass", lambda *a: passes.append("minmax") or minmax(*a))
    monkeypatch.setattr(calibration, "_histogram_pass", lambda *a: passes.append("histogram") or histogram(*a))
    data = calib.take(31)  # samples no other test calibrates on: nothing memoized
    for method in ("minmax", "percentile", "entropy"):
        calibration.calibration_cache(digits_proto, digits_proto, data, method, 16, 99.99, tmp_path)
    assert passes == ["minmax", "histogram"]  # one minmax pass, one histogram pass for percentile and entropy


def test_a_minmax_calibration_ahead_of_a_remedy_loop_serves_every_method_from_one_pass(
    digits_proto, calib, tmp_path, monkeypatch
):
    """Histograms collected ahead (a remedy loop may try percentile and entropy): one pass serves all three methods,
    and minmax's ranges are onnxruntime's MinMax calibrator's, bit for bit."""
    passes = []
    minmax, histogram = calibration._minmax_pass, calibration._histogram_pass
    monkeypatch.setattr(calibration, "_minmax_pass", lambda *a: passes.append("minmax") or minmax(*a))
    monkeypatch.setattr(calibration, "_histogram_pass", lambda *a: passes.append("histogram") or histogram(*a))
    monkeypatch.setattr(calibration, "_MEMO", {})
    monkeypatch.setattr(calibration, "_STATS", {})
    data = calib.take(29)
    ahead = {
        m: _ranges(calibration.calibration_cache(digits_proto, digits_proto, data, m, 16, 99.99, tmp_path, ahead=True))
        for m in ("minmax", "percentile", "entropy")
    }
    assert passes == ["histogram"]
    monkeypatch.setattr(calibration, "_MEMO", {})
    monkeypatch.setattr(calibration, "_STATS", {})
    assert (
        _ranges(calibration.calibration_cache(digits_proto, digits_proto, data, "minmax", 16, 99.99, tmp_path))
        == (ahead["minmax"])
    )
    assert passes == ["histogram", "minmax"]  # the same ranges from onnxruntime's own pass
    assert ahead["percentile"] != ahead["minmax"]


def test_histograms_are_collected_ahead_only_for_a_remedy_loop_that_may_use_them():
    from deployc.core.config import QuantizeSpec

    assert calibration.histograms_ahead(QuantizeSpec())  # the default loop tries percentile and entropy
    assert not calibration.histograms_ahead(QuantizeSpec(remedies="off"))
    assert not calibration.histograms_ahead(QuantizeSpec(remedies={"methods": ["minmax"]}))
    assert not calibration.histograms_ahead(QuantizeSpec(remedies={"stages": ["granularity", "fallback"]}))


def test_computed_otherwise_names_what_a_rewrite_computes_in_another_way(digits_proto):
    """A node that keeps its output's name but is another op (a fusion), or reads a changed weight, makes its output
    and everything after it count as computed otherwise; the rest is computed as the root computes it."""
    from deployc.passes.onnx_util import producers

    root = named(digits_proto)
    order = [o for n in root.graph.node for o in n.output]
    assert calibration.computed_otherwise(root, root) == set()
    fused = onnx.ModelProto()
    fused.CopyFrom(root)
    i = next(k for k, n in enumerate(fused.graph.node) if n.op_type == "Relu")
    relu = fused.graph.node[i]
    relu.op_type = "LeakyRelu"  # same name, same output: computed otherwise
    got = calibration.computed_otherwise(root, fused)
    assert relu.output[0] in got
    assert got == calibration.downstream(fused, {relu.output[0]})
    assert all(t not in got for t in order[: order.index(relu.output[0])])  # nothing before it
    reweighted = onnx.ModelProto()
    reweighted.CopyFrom(root)
    w = next(x for x in reweighted.graph.initializer if len(x.dims) > 1)
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * 2, w.name))
    reader = next(n for n in reweighted.graph.node if w.name in n.input)
    assert reader.output[0] in calibration.computed_otherwise(root, reweighted)
    assert producers(reweighted.graph.node)[reader.output[0]] is reader
