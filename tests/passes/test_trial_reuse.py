"""Remedy trials reuse what an earlier trial computed (issue 25): onnxruntime's quant_pre_process output, the smoothed
graph and the channel-range check's per-channel extremes are computed once per graph and samples, and a trial served
from them gives the bytes a cold one does."""

from __future__ import annotations

from collections import Counter

import onnxruntime.quantization.shape_inference as shape_inference
import pytest

from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.passes import quantize, quantize_checks
from deployc.passes.quantize import Int8Config, quantize_int8_selected


@pytest.fixture(scope="module")
def calib() -> Dataset:
    x, _ = digits_arrays("train")
    return Dataset({"image": x[40:64]}, None, "image")  # samples no other test quantizes on


def _cold(monkeypatch) -> None:
    for memo in ("_PREPARED", "_SMOOTHED"):
        monkeypatch.setattr(quantize, memo, {})
    monkeypatch.setattr(quantize_checks, "_EXTREMES", {})


def _all_cold(monkeypatch) -> None:
    """Nothing memoized: no trial ran before (calibration's statistics, bias correction's sums, kept runs)."""
    from deployc.passes import activations, bias_correction, calibration

    _cold(monkeypatch)
    for module, memo in (
        (calibration, "_MEMO"),
        (calibration, "_STATS"),
        (bias_correction, "_SUMS"),
        (bias_correction, "_HELD"),
        (activations, "_KEPT"),
    ):
        monkeypatch.setattr(module, memo, {})


def test_trials_reuse_preprocessing_smoothing_and_channel_extremes(digits_proto, calib, monkeypatch):
    calls: Counter[str] = Counter()
    prep, smooth, streamed = shape_inference.quant_pre_process, quantize.smooth, quantize_checks.streamed
    monkeypatch.setattr(shape_inference, "quant_pre_process", lambda *a, **k: calls.update(["prep"]) or prep(*a, **k))
    monkeypatch.setattr(quantize, "smooth", lambda *a, **k: calls.update(["smooth"]) or smooth(*a, **k))
    monkeypatch.setattr(quantize_checks, "streamed", lambda *a, **k: calls.update(["extremes"]) or streamed(*a, **k))
    _cold(monkeypatch)
    spec = Int8Config(smoothing=0.8)
    first = quantize_int8_selected(digits_proto, calib, spec).proto
    symmetric = quantize_int8_selected(digits_proto, calib, spec.model_copy(update={"symmetric_activations": True}))
    again = quantize_int8_selected(digits_proto, calib, spec).proto
    assert calls["smooth"] == 1 and calls["prep"] == 1  # three trials, one smoothing, one pre-processing
    assert symmetric.proto.SerializeToString() != first.SerializeToString()  # the trials did differ
    warnings = quantize_checks.channel_range_warnings(digits_proto, first, calib, ratio=1.0)
    assert quantize_checks.channel_range_warnings(digits_proto, again, calib, ratio=1.0) == warnings
    assert calls["extremes"] == 1 and warnings  # a second check reads the first's per-channel extremes
    _cold(monkeypatch)
    cold = quantize_int8_selected(digits_proto, calib, spec).proto
    assert calls["smooth"] == 2 and calls["prep"] == 2
    assert cold.SerializeToString() == again.SerializeToString() == first.SerializeToString()
    assert quantize_checks.channel_range_warnings(digits_proto, cold, calib, ratio=1.0) == warnings
    assert calls["extremes"] == 2


def test_a_smoothing_trial_reads_the_unsmoothed_trials_ranges_and_input_sums(digits_proto, calib, monkeypatch):
    from deployc.passes import bias_correction, calibration, smoothquant

    root = digits_proto
    spec = Int8Config(calibration="percentile")
    smoothing = spec.model_copy(update={"smoothing": 0.8})

    def cold() -> None:
        _all_cold(monkeypatch)

    cold()
    alone = quantize_int8_selected(root, calib, smoothing, root=root).proto  # nothing to read off
    cold()
    quantize_int8_selected(root, calib, spec, root=root)  # the trial before it
    passes: Counter[str] = Counter()
    for name in ("_minmax_pass", "_histogram_pass"):
        real = getattr(calibration, name)
        monkeypatch.setattr(calibration, name, lambda *a, _f=real, _n=name: passes.update([_n]) or _f(*a))
    # calibration.streamed: a whole-graph run; the smoothing trial's pass runs only the nodes after what it changed
    for module, name in ((smoothquant, "streamed"), (bias_correction, "session"), (calibration, "streamed")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=real, _n=name, **k: passes.update([_n]) or _f(*a, **k))
    sums = len(bias_correction._SUMS)
    warm = quantize_int8_selected(root, calib, smoothing, root=root)
    # smoothing's channel maxima are the percentile pass's; the smoothed graph runs once, for its changed tensors'
    # ranges, and bias correction reads their values from that run
    assert passes == Counter({"_histogram_pass": 1})
    assert warm.smoothing is not None and warm.smoothing.muls + sum(warm.smoothing.folded.values()) > 0
    assert warm.proto.SerializeToString() == alone.SerializeToString()
    assert not passes["_minmax_pass"]  # no calibration of the whole smoothed graph
    # only the smoothed layers' inputs are measured anew for bias correction, not every weighted op's
    added = len(bias_correction._SUMS) - sums
    assert 0 < added < sums


def test_smoothing_reads_channel_maxima_off_the_histogram_pass_of_its_preprocessed_graph(
    digits_proto, calib, monkeypatch, tmp_path
):
    import numpy as np
    import onnx

    from deployc.passes import calibration, smoothquant
    from deployc.passes.onnx_util import copied, weighted_matmul_inputs

    _cold(monkeypatch)
    monkeypatch.setattr(calibration, "_STATS", {})
    names = sorted(weighted_matmul_inputs(digits_proto))
    cold = smoothquant.channel_absmax(digits_proto, names, calib)  # its own run: nothing measured yet
    prepared = onnx.load(quantize._prepared(digits_proto, tmp_path))
    assert calibration.run_key(prepared, calib) != calibration.run_key(digits_proto, calib)  # not the same graph
    calibration.statistics(prepared, calib, histograms=True)  # what the percentile trial measured
    runs: Counter[str] = Counter()
    streamed = smoothquant.streamed
    monkeypatch.setattr(smoothquant, "streamed", lambda *a, **k: runs.update(["run"]) or streamed(*a, **k))
    found = quantize.prepared_if_done(digits_proto)
    assert found is not None and found.SerializeToString() == prepared.SerializeToString()
    warm = smoothquant.channel_absmax(digits_proto, names, calib, (found,))
    assert not runs and names and set(warm) == set(names)
    for name in names:  # the reused maxima are those a run of the float graph measures, bit for bit
        np.testing.assert_array_equal(warm[name], cold[name])
    smoothed, _ = quantize.smoothed(digits_proto, calib, Int8Config(smoothing=0.8))
    assert not runs  # the smoothing trial reads them through quantize's pre-processing memo
    _cold(monkeypatch)
    monkeypatch.setattr(calibration, "_STATS", {})
    alone, _ = quantize.smoothed(digits_proto, calib, Int8Config(smoothing=0.8))
    assert runs["run"] == 1 and alone.SerializeToString() == smoothed.SerializeToString()
    # a changed graph (one weight scaled) finds no pre-processed graph of its own bytes, so nothing stale
    changed = copied(digits_proto)
    weight = changed.graph.initializer[0]
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 2, weight.name))
    assert quantize.prepared_if_done(changed) is None


def test_a_fed_pass_computes_what_the_whole_graph_does_and_only_from_its_own_graphs_kept_run(
    digits_proto, calib, monkeypatch
):
    import numpy as np

    from deployc.passes import activations, calibration
    from deployc.passes.activations import run_key, streamed

    monkeypatch.setattr(activations, "_KEPT", {})
    graph = digits_proto
    calibration._histogram_pass(graph, calibration.calibrated_tensors(graph), calib, 16)  # a full pass keeps
    key = run_key(graph, calib)
    sizes, kept = activations.kept_batches(key)
    assert kept and sizes == [16, 8]  # the weighted ops' inputs (and their producers'), batch by batch
    after = {o for n in graph.graph.node if n.input and n.input[0] in kept for o in n.output}
    names = sorted(calibration.downstream(graph, after) & set(calibration.calibrated_tensors(graph)))
    fed = calibration._fed_runs(graph, names, calib, (key, set(kept)))
    assert fed is not None and fed[0] == sizes
    for part, whole in zip(fed[1], streamed(graph, names, calib, "test", 16), strict=True):
        for name in names:  # the same kernels on the same inputs: the same values, bit for bit
            np.testing.assert_array_equal(part[name], whole[name])
    assert calibration._fed_runs(graph, names, calib, ("another graph", set(kept))) is None  # keyed by graph bytes
    # kept tensors whose values the graph computes otherwise (what a rewrite changed) feed nothing
    assert calibration._fed_runs(graph, names, calib, (key, set())) is None


def _float_runs_from_cold(monkeypatch) -> list[int]:
    """Nothing memoized or kept; the list grows by one each time bias correction runs a float graph itself."""
    from deployc.core import memory
    from deployc.passes import bias_correction

    _all_cold(monkeypatch)
    memory.drop_kept()
    runs: list[int] = []
    real = bias_correction.session
    monkeypatch.setattr(bias_correction, "session", lambda *a, **k: runs.append(1) or real(*a, **k))
    return runs


@pytest.mark.parametrize("fits", [True, False])
def test_bias_correction_reads_the_calibration_pass_instead_of_running_the_float_graph(
    digits_proto, calib, monkeypatch, fits
):
    """Trial 1 of a build with a remedy loop: its calibration pass (histograms ahead) keeps its weighted ops'
    inputs, and bias correction sums them: no float run of its own, and the bytes of a correction that ran one.
    When the budget cannot keep them, the pass keeps nothing and bias correction runs the graph itself."""
    from deployc.core import memory
    from deployc.passes.activations import run_bytes
    from deployc.passes.bias_correction import measured_inputs

    runs = _float_runs_from_cold(monkeypatch)
    spec = Int8Config(reduce_range=False)
    own = quantize_int8_selected(digits_proto, calib, spec, root=digits_proto).proto  # minmax: onnxruntime's pass
    assert len(runs) == 1
    _all_cold(monkeypatch)
    memory.drop_kept()

    inputs = run_bytes(digits_proto, measured_inputs(digits_proto), calib)  # what the pass keeps
    budget = memory.Budget(1 << 34 if fits else memory.KEEP_SHARE * inputs // 2, "test")
    with memory.applied(budget):
        ahead = quantize_int8_selected(digits_proto, calib, spec, root=digits_proto, ahead=True)
        assert len(runs) == (1 if fits else 2)
        percentile = spec.model_copy(update={"calibration": "percentile"})
        quantize_int8_selected(digits_proto, calib, percentile, root=digits_proto, ahead=True)  # trial 2
        assert len(runs) == (1 if fits else 3)  # its input sums from the same kept values, or a run again
    assert ahead.proto.SerializeToString() == own.SerializeToString()
    memory.drop_kept()


def test_input_values_held_by_bias_corrections_own_run_serve_a_later_trial(digits_proto, calib, monkeypatch):
    """No histograms ahead (no percentile or entropy in the loop): trial 1's bias correction runs the float graph
    and holds its inputs; a trial with another input scale (symmetric activations) sums them without a run."""
    from deployc.core import memory

    runs = _float_runs_from_cold(monkeypatch)
    spec = Int8Config(reduce_range=False)
    quantize_int8_selected(digits_proto, calib, spec, root=digits_proto)
    symmetric = spec.model_copy(update={"symmetric_activations": True})
    warm = quantize_int8_selected(digits_proto, calib, symmetric, root=digits_proto).proto
    assert len(runs) == 1
    _all_cold(monkeypatch)
    memory.drop_kept()
    assert quantize_int8_selected(digits_proto, calib, symmetric, root=digits_proto).proto.SerializeToString() == (
        warm.SerializeToString()
    )
    assert len(runs) == 2
    memory.drop_kept()
