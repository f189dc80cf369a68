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
