"""onnxruntime's weight quantization memoized across quantize_static calls (passes/quantize_memo.py): a second
quantization of the same weights computes none of their parameters or int8 values again, and gives the same bytes."""

from __future__ import annotations

from collections import Counter

from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.passes import quantize_memo
from deployc.passes.quantize import Int8Config, quantize_int8


def test_a_second_quantization_of_the_same_weights_reuses_them_with_the_same_bytes(digits_proto, monkeypatch):
    from onnxruntime.quantization import qdq_quantizer

    x, _ = digits_arrays("train")
    calib = Dataset({"image": x[:16]}, None, "image")
    calls: Counter[str] = Counter()
    for name in ("compute_data_quant_params", "quantize_onnx_initializer"):
        real = getattr(qdq_quantizer, name)
        monkeypatch.setattr(qdq_quantizer, name, lambda *a, _f=real, _n=name, **k: calls.update([_n]) or _f(*a, **k))
    monkeypatch.setattr(quantize_memo, "_PARAMS", {})
    monkeypatch.setattr(quantize_memo, "_WEIGHTS", {})
    spec = Int8Config(reduce_range=False, bias_correction=False)
    with monkeypatch.context() as off:  # onnxruntime as it is: no memo
        off.setattr(quantize_memo, "memoized_weights", quantize_memo.contextlib.nullcontext)
        off.setattr("deployc.passes.quantize.memoized_weights", quantize_memo.contextlib.nullcontext)
        plain = quantize_int8(digits_proto, calib, spec).SerializeToString()
    computed = dict(calls)
    assert computed["compute_data_quant_params"] > 50 and computed["quantize_onnx_initializer"] >= 3
    calls.clear()
    first = quantize_int8(digits_proto, calib, spec).SerializeToString()
    assert calls == Counter(computed)  # a cold memo computes every one
    calls.clear()
    again = quantize_int8(digits_proto, calib, spec.model_copy(update={"calibration": "percentile"}))
    assert not calls  # other activation ranges, the same weights: nothing computed
    assert first == plain
    # the same bytes as onnxruntime alone on the second (warm) call too
    with monkeypatch.context() as off:
        off.setattr("deployc.passes.quantize.memoized_weights", quantize_memo.contextlib.nullcontext)
        cold = quantize_int8(digits_proto, calib, spec.model_copy(update={"calibration": "percentile"}))
    assert again.SerializeToString() == cold.SerializeToString()
    assert qdq_quantizer.compute_data_quant_params.__name__ == "<lambda>"  # the patch is undone after each call
