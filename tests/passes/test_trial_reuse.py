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


def test_trials_reuse_preprocessing_smoothing_and_channel_extremes(digits_proto, calib, monkeypatch):
    calls: Counter[str] = Counter()
    prep, smooth, streamed = shape_inference.quant_pre_process, quantize.smooth, quantize_checks.streamed
    monkeypatch.setattr(shape_inference, "quant_pre_process", lambda *a, **k: calls.update(["prep"]) or prep(*a, **k))
    monkeypatch.setattr(quantize, "smooth", lambda *a: calls.update(["smooth"]) or smooth(*a))
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
    from deployc.passes import activations, bias_correction, calibration, smoothquant

    root = digits_proto
    spec = Int8Config(calibration="percentile")
    smoothing = spec.model_copy(update={"smoothing": 0.8})

    def cold() -> None:
        _cold(monkeypatch)
        for module, memo in (
            (calibration, "_MEMO"),
            (calibration, "_STATS"),
            (bias_correction, "_SUMS"),
            (bias_correction, "_HELD"),
            (activations, "_KEPT"),
        ):
            monkeypatch.setattr(module, memo, {})

    cold()
    alone = quantize_int8_selected(root, calib, smoothing, root=root).proto  # nothing to read off
    cold()
    quantize_int8_selected(root, calib, spec, root=root)  # the trial before it
    passes: Counter[str] = Counter()
    for name in ("_minmax_pass", "_histogram_pass"):
        real = getattr(calibration, name)
        monkeypatch.setattr(calibration, name, lambda *a, _f=real, _n=name: passes.update([_n]) or _f(*a))
    for module, name in ((smoothquant, "streamed"), (bias_correction, "session")):
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
