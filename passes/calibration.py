"""Activation ranges for static int8, calibrated once per float graph, samples and method and shared by every pass
that quantizes it (quantize.int8, tensorrt.int8 and their remedy trials) through quantize_static's calibration
cache: the onnx and tensorrt targets used to calibrate the same exported graph twice (issue 14).

The ranges are those of the graph both targets start from (the build's float ONNX, `root`). A target's own graph
differs from it by value-preserving rewrites (node names, an opset upgrade, onnxruntime's pre-processing fusions,
unshared biases), which keep the names of the tensors they do not remove. When every tensor the target's graph
computes is also computed by the root, the root's ranges are its ranges; otherwise (smoothing's new Mul outputs,
an opset adapter) the target's graph is calibrated itself. Either way the ranges are a function of one graph and
the samples, never of which other targets ran: a build of one target gives the bytes a build of three does."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from deployc.core.ort import CalibrationReader
from deployc.data.dataset import Dataset

# onnxruntime's quantize_static builds its Entropy calibrator with 128 bins and 128 quantized bins: the KL search
# then has one candidate, the whole range, and the result is MinMax's (benchmarks/peers/README.md). TensorRT's
# and PyTorch's histogram: 2048 bins searched for the 128-bin threshold of least KL divergence.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}  # onnxruntime's names
_MEMO: dict[str, tuple[frozenset[str], str]] = {}  # key -> (tensors the calibrated graph computes, cache JSON)


def _computed(proto: Any) -> frozenset[str]:
    """Every non-constant tensor a graph reads or writes ("" is an omitted optional input, no tensor)."""
    consts = {i.name for i in proto.graph.initializer}
    names = {t for n in proto.graph.node for t in (*n.input, *n.output) if t}
    return frozenset(names | {i.name for i in proto.graph.input}) - consts


def _options(method: str, percentile: float) -> dict[str, Any]:
    if method == "entropy":
        return {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
    if method == "percentile":
        return {"percentile": percentile}  # onnxruntime's histogram defaults otherwise, as quantize_static's
    return {}


def _key(proto_bytes: bytes, data: Dataset, method: str, batch: int, percentile: float) -> str:
    digest = hashlib.sha256(proto_bytes)
    for name in sorted(data.inputs):
        digest.update(name.encode() + data.inputs[name].tobytes())
    # min/max do not depend on how samples are batched; onnxruntime's histograms re-bin as batches widen the range
    shape = method if method == "minmax" else f"{method}:{batch}:{percentile if method == 'percentile' else ''}"
    digest.update(shape.encode())
    return digest.hexdigest()


def _calibrate(proto: Any, data: Dataset, method: str, batch: int, percentile: float, work: Path) -> str:
    """quantize_static's own calibration of `proto`, over the tensors of every op type it holds, as cache JSON."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    src, cache = work / "calibrated.onnx", work / "calibrated-ranges.json"
    onnx.save(proto, src)
    calibrator = create_calibrator(
        str(src),
        sorted({n.op_type for n in proto.graph.node}),
        augmented_model_path=str(work / "calibrated-augmented.onnx"),
        calibrate_method=getattr(CalibrationMethod, METHODS[method]),
        extra_options=_options(method, percentile),
    )
    calibrator.collect_data(CalibrationReader(data, batch))
    save_tensors_data(calibrator.compute_data(), cache)
    return cache.read_text()


def _ranges(proto: Any, data: Dataset, method: str, batch: int, percentile: float, work: Path) -> tuple:
    key = _key(proto.SerializeToString(deterministic=True), data, method, batch, percentile)
    if key not in _MEMO:
        _MEMO[key] = (_computed(proto), _calibrate(proto, data, method, batch, percentile, work))
    return _MEMO[key]


def calibration_cache(
    root: Any, graph: Any, data: Dataset, method: str, batch: int, percentile: float, work: Path
) -> str:
    """Path of a quantize_static calibration cache (in `work`) with the ranges of `graph`'s tensors: the root's
    when `graph` computes nothing the root does not, else `graph`'s own. Memoized per process."""
    computed, text = _ranges(root, data, method, batch, percentile, work)
    if not _computed(graph) <= computed:
        computed, text = _ranges(graph, data, method, batch, percentile, work)
    cache = work / f"ranges-{method}.json"
    cache.write_text(text)
    return str(cache)


def _span(td: Any) -> float:
    low, high = td.range_value  # onnxruntime keeps 0-d or 1-element arrays
    lo, hi = float(np.min(low)), float(np.max(high))
    return max(hi, 0.0) - min(lo, 0.0)  # the quantized range always holds 0


def mismatched_concats(graph: Any, cache: str, ratio: float) -> dict[str, str]:
    """Concat nodes to keep in float, with why: a quantized Concat gives its output one int8 scale, so an input
    whose range is `ratio`× smaller than the output's keeps a handful of levels (YOLOv8n's head concatenates box
    pixels, 0-320, with class scores, 0-1: every score rounds to 0)."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    ranges = load_tensors_data(cache).data
    kept = {}
    for n in graph.graph.node:
        if n.op_type != "Concat" or n.output[0] not in ranges:
            continue
        spans = {t: _span(ranges[t]) for t in n.input if t in ranges}
        out = _span(ranges[n.output[0]])
        small = min(spans, key=spans.get, default=None)
        if small is not None and out > 0 and spans[small] * ratio < out:
            kept[n.name] = (
                f"input '{small}' spans {spans[small]:.3g}, the output {out:.3g}: one int8 scale would leave it "
                f"{max(1, round(255 * spans[small] / out))} of 255 levels"
            )
    return kept
