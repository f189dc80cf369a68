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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployc.data.dataset import Dataset
from deployc.passes.activations import batch_size, per_sample_bytes, streamed

# onnxruntime's quantize_static builds its Entropy calibrator with 128 bins and 128 quantized bins: the KL search
# then has one candidate, the whole range, and the result is MinMax's (benchmarks/peers/README.md). TensorRT's
# and PyTorch's histogram: 2048 bins searched for the 128-bin threshold of least KL divergence.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128
PERCENTILE_BINS = 2048  # onnxruntime's Percentile calibrator: 2048 bins of |x| over [min|x|, max|x|]
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}  # onnxruntime's names
# Each tensor's histogram: FINE_BINS over [-2^k, 2^k], the smallest power of two that holds every value seen. When a
# batch needs a wider range, pairs of bins merge exactly, so the counts never depend on how samples were batched;
# both methods' 2048-bin histograms over [-max|x|, max|x|] are read off it (4-8 fine bins to one of theirs).
FINE_BINS = 16384
_BLOCK = 1 << 18  # values binned at a time: the index arithmetic stays in cache
_SMALLEST = 2.0**-24  # the range of a tensor that was only ever 0
_SERIES = 12  # terms of the log series in kl_threshold: e1/p <= 0.21, so the rest is below 1e-9 of a bin
_MEMO: dict[str, tuple[frozenset[str], str]] = {}  # key -> (tensors the calibrated graph computes, cache JSON)
_STATS: dict[str, Statistics] = {}  # graph + samples -> what one pass over them measured


def _computed(proto: Any) -> frozenset[str]:
    """Every non-constant tensor a graph reads or writes ("" is an omitted optional input, no tensor)."""
    consts = {i.name for i in proto.graph.initializer}
    names = {t for n in proto.graph.node for t in (*n.input, *n.output) if t}
    return frozenset(names | {i.name for i in proto.graph.input}) - consts


def calibrated_tensors(proto: Any) -> list[str]:
    """The tensors onnxruntime's calibrators measure when given every op type: float/float16 inputs and outputs of
    nodes, typed by shape inference, not initializers (CalibraterBase.select_tensors_to_calibrate)."""
    from onnx import TensorProto

    from deployc.passes.sensitivity import tensor_types

    types = tensor_types(proto)
    consts = {i.name for i in proto.graph.initializer}
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16}
    names = (t for n in proto.graph.node for t in (*n.input, *n.output))
    return sorted({t for t in names if t and t not in consts and types.get(t) in floats})


# ---- one streaming pass: running min/max and fixed-grid histograms ------------------------------------------


@dataclass
class TensorStats:
    lo: float = math.inf
    hi: float = -math.inf
    radius: float = 0.0  # the histogram covers [-radius, radius] (a power of two)
    hist: np.ndarray | None = None  # FINE_BINS counts

    @property
    def absmax(self) -> float:
        return max(abs(self.lo), abs(self.hi)) if self.seen else 0.0

    @property
    def seen(self) -> bool:
        return self.lo <= self.hi


@dataclass
class Statistics:
    histograms: bool
    tensors: dict[str, TensorStats] = field(default_factory=dict)


def _radius(absmax: float) -> float:
    """The smallest power of two >= absmax."""
    mantissa, exponent = math.frexp(max(absmax, _SMALLEST))
    return math.ldexp(1.0, exponent - 1 if mantissa == 0.5 else exponent)


def _widened(hist: np.ndarray, factor: int) -> np.ndarray:
    """Counts over [-r, r] as counts over [-factor*r, factor*r] with as many bins (factor: a power of two)."""
    n = hist.size
    out = np.zeros_like(hist)
    if factor >= n:  # the old range falls inside the two bins around 0
        out[n // 2 - 1], out[n // 2] = hist[: n // 2].sum(), hist[n // 2 :].sum()
        return out
    k = n // factor
    out[n // 2 - k // 2 : n // 2 + k // 2] = hist.reshape(k, factor).sum(axis=1)
    return out


class _Binner:
    """Counts of float32 values into FINE_BINS bins over [-r, r], a block at a time (buffers reused)."""

    def __init__(self) -> None:
        self.scaled = np.empty(_BLOCK, np.float32)
        self.index = np.empty(_BLOCK, np.intp)

    def add(self, hist: np.ndarray, values: np.ndarray, radius: float) -> None:
        n = hist.size
        scale, offset = np.float32(n / (2 * radius)), np.float32(n / 2)
        for start in range(0, values.size, _BLOCK):
            block = values[start : start + _BLOCK]
            scaled, index = self.scaled[: block.size], self.index[: block.size]
            np.multiply(block, scale, out=scaled)
            scaled += offset
            np.clip(scaled, 0, n - 1, out=scaled)
            np.copyto(index, scaled, casting="unsafe")  # truncation: floor of a value >= 0
            hist += np.bincount(index, minlength=n)


def _update(stats: TensorStats, value: np.ndarray, binner: _Binner | None) -> None:
    values = np.ascontiguousarray(value, dtype=np.float32).reshape(-1)
    if values.size == 0:
        return
    lo, hi = float(values.min()), float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN/inf carry no range: measure the finite values
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())
    stats.lo, stats.hi = min(stats.lo, lo), max(stats.hi, hi)
    if binner is None:
        return
    radius = _radius(max(abs(lo), abs(hi)))
    if stats.hist is None:
        stats.hist, stats.radius = np.zeros(FINE_BINS, np.int64), radius
    elif radius > stats.radius:
        stats.hist = _widened(stats.hist, round(radius / stats.radius))
        stats.radius = radius
    binner.add(stats.hist, values, stats.radius)


def collect(proto: Any, data: Dataset, histograms: bool, batch: int = 64) -> Statistics:
    """Every calibrated tensor's min/max (and histogram) over `data`, in one streaming pass whose batches (at most
    `batch` samples) fit the memory budget. The result does not depend on the batch size."""
    names = calibrated_tensors(proto)
    stats = Statistics(histograms, {n: TensorStats() for n in names})
    binner = _Binner() if histograms else None
    size = batch_size(per_sample_bytes(proto, names, data), data, "calibration", batch)
    for values in streamed(proto, names, data, "calibration", size):
        for name, value in values.items():
            _update(stats.tensors[name], value, binner)
    return stats


# ---- each method's ranges from the statistics ----------------------------------------------------------------


def _coarse(stats: TensorStats, bins: int, folded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges): the fine histogram as `bins` bins over [-max|x|, max|x|] (of |x| over [0, max|x|] when
    folded), each fine bin counted whole in the bin that holds its centre: counts stay integers, values of a fine bin
    that straddles an edge land in one of the two bins beside it."""
    assert stats.hist is not None
    hist, n, top = stats.hist, stats.hist.size, stats.absmax
    if folded:
        counts, low = hist[n // 2 :] + hist[n // 2 - 1 :: -1], 0.0
    else:
        counts, low = hist, -stats.radius
    width = (stats.radius - low) / counts.size
    centres = low + (np.arange(counts.size) + 0.5) * width
    first = 0.0 if folded else -top
    index = np.clip(np.floor((centres - first) / ((top - first) / bins)), 0, bins - 1).astype(np.intp)
    coarse = np.bincount(index, weights=counts.astype(np.float64), minlength=bins)
    return np.rint(coarse).astype(np.int64), np.linspace(first, top, bins + 1)


def percentile_range(stats: TensorStats, percentile: float) -> tuple[float, float]:
    """onnxruntime's symmetric Percentile (HistogramCollector.compute_percentile) on the 2048-bin histogram of |x|:
    t = the left edge of the bin where the CDF reaches `percentile`, clipped to the tensor's own min and max."""
    if stats.absmax == 0.0:
        return stats.lo, stats.hi
    hist, edges = _coarse(stats, PERCENTILE_BINS, folded=True)
    cdf = np.cumsum(hist / hist.sum())
    t = float(edges[int(np.searchsorted(cdf, percentile / 100.0))])
    return max(-t, stats.lo), min(t, stats.hi)


def entropy_range(stats: TensorStats) -> tuple[float, float]:
    """onnxruntime's Entropy: the 2048-bin histogram over [-max|x|, max|x|] and the threshold of least KL divergence
    to its 128-bin quantization (kl_threshold), clipped to the tensor's own min and max."""
    if stats.absmax == 0.0:
        return stats.lo, stats.hi
    hist, edges = _coarse(stats, ENTROPY_BINS)
    start, end = kl_threshold(hist, ENTROPY_QUANTIZED_BINS)
    return max(float(edges[start]), stats.lo), min(float(edges[end]), stats.hi)


def kl_threshold(hist: np.ndarray, quantized_bins: int) -> tuple[int, int]:
    """HistogramCollector.get_entropy_threshold's search: the (start, end) bin edges of the centred slice of `hist`
    whose `quantized_bins`-bin quantization (both smoothed by quant_utils.smooth_distribution) has least KL
    divergence. Its Python loop costs ~1 s a tensor; here every candidate at once, in float64, from prefix sums:
    smoothing keeps each distribution's total, so KL = (sum ps·log ps − sum ps·log qs)/total − log total + log sum q,
    where q is constant over each quantized bin and sum (p−e1)·log(p−e1) over a slice is a series in e1 <= 0.21."""
    h = hist.astype(np.int64)
    nb, nq, eps = h.size, quantized_bins, 0.0001
    zero = nb // 2
    i = np.arange(nq // 2, zero + 1)
    start, end = zero - i, np.minimum(zero + i + 1, nb)
    width, merged = end - start, (end - start) // nq
    total = float(h.sum())

    def prefix(values: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(values)])

    cs, nz = prefix(h), prefix(h != 0)
    with np.errstate(divide="ignore"):
        hf = np.where(h > 0, h, 1).astype(np.float64)
    live = (h != 0).astype(np.float64)
    powers = [prefix(live * hf ** (1 - m)) for m in range(_SERIES + 2)]  # sums of p^(1-m) over nonzero bins
    plogp, logp = prefix(live * hf * np.log(hf)), prefix(live * np.log(hf))

    def between(pre: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return pre[b] - pre[a]

    # the slice's end bins also hold every count outside it (get_entropy_threshold's outliers)
    first, last = h[start] + cs[start], h[end - 1] + (cs[-1] - cs[end])
    lo, hi = start + 1, end - 1  # interior bins [lo, hi): p is the histogram itself there
    nonzero = between(nz, lo, hi) + (first != 0) + (last != 0)
    zeros = width - nonzero
    e1 = eps * zeros / np.maximum(nonzero, 1)
    # sum over the interior's nonzero bins of (p - e1)·log(p - e1), by log(1 - u) = -sum u^m/m with u = e1/p
    inner = between(plogp, lo, hi) - e1 * between(logp, lo, hi)
    for m in range(1, _SERIES + 1):
        inner -= e1**m / m * (between(powers[m], lo, hi) - e1 * between(powers[m + 1], lo, hi))

    def flogf(p: np.ndarray) -> np.ndarray:
        x = np.where(p != 0, p - e1, 1.0)
        return np.where(p != 0, x * np.log(x), 0.0)

    sum_plogp = inner + flogf(first.astype(np.float64)) + flogf(last.astype(np.float64)) + zeros * eps * np.log(eps)
    # the quantized bins: block k holds slice bins [k·merged, (k+1)·merged); the last also the remainder's counts
    k = np.arange(nq)
    block_lo = start[:, None] + k[None, :] * merged[:, None]
    block_hi = block_lo + merged[:, None]
    quantized = cs[block_hi] - cs[block_lo]
    tail = start + nq * merged  # the remainder [tail, end) is 0 in q
    quantized[:, -1] += cs[end] - cs[tail]
    in_p = cs[block_hi] - cs[block_lo]  # p's counts per block, outliers added where the end bins fall
    in_p[:, 0] += cs[start]
    nz_block = nz[block_hi] - nz[block_lo]
    nz_block[:, 0] += (first != 0) & (h[start] == 0)
    has_tail = tail < end
    right = np.where(has_tail, 0, cs[-1] - cs[end])
    in_p[:, -1] += right
    nz_block[:, -1] += np.where(has_tail, 0, (last != 0) & (h[end - 1] == 0))
    level = np.where(nz_block > 0, np.trunc(quantized / np.maximum(nz_block, 1)), 0.0)
    q_zeros = merged[:, None] * (level == 0)
    q_zero_count = q_zeros.sum(axis=1) + (end - tail)
    q_nonzero = width - q_zero_count
    e2 = eps * q_zero_count / np.maximum(q_nonzero, 1)
    value = np.where(level != 0, level - e2[:, None], eps)
    block_ps = in_p - e1[:, None] * nz_block + eps * (merged[:, None] - nz_block)
    tail_p = np.where(has_tail, cs[end] - cs[tail] + (cs[-1] - cs[end]), 0)
    tail_nz = np.where(has_tail, nz[end] - nz[tail] + ((last != 0) & (h[end - 1] == 0)), 0)
    tail_ps = tail_p - e1 * tail_nz + eps * ((end - tail) - tail_nz)
    sum_plogq = (np.log(value) * block_ps).sum(axis=1) + np.log(eps) * tail_ps
    sum_q = (merged[:, None] * level).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (sum_plogp - sum_plogq) / total - np.log(total) + np.log(sum_q)
    kl = np.where((nonzero > 0) & (q_nonzero > 0) & (total > 0), kl, np.inf)
    best = int(np.argmin(kl))  # the first of equal divergences, as get_entropy_threshold
    return int(start[best]), int(end[best])


def _method_ranges(stats: Statistics, method: str, percentile: float) -> dict[str, tuple[float, float]]:
    ranges = {}
    for name, s in stats.tensors.items():
        if not s.seen:
            continue
        if method == "percentile":
            ranges[name] = percentile_range(s, percentile)
        elif method == "entropy":
            ranges[name] = entropy_range(s)
        else:
            ranges[name] = (s.lo, s.hi)
    return ranges


# ---- the shared cache --------------------------------------------------------------------------------------


def _data_key(proto_bytes: bytes, data: Dataset) -> str:
    digest = hashlib.sha256(proto_bytes)
    for name in sorted(data.inputs):
        digest.update(name.encode() + data.inputs[name].tobytes())
    return digest.hexdigest()


def statistics(proto: Any, data: Dataset, histograms: bool, batch: int = 64, key: str | None = None) -> Statistics:
    """collect()'s result for this graph and these samples, memoized: a pass with histograms serves every method,
    one without serves minmax."""
    key = key or _data_key(proto.SerializeToString(deterministic=True), data)
    have = _STATS.get(key)
    if have is None or (histograms and not have.histograms):
        _STATS[key] = collect(proto, data, histograms, batch)
    return _STATS[key]


def _calibrate(proto: Any, data: Dataset, method: str, batch: int, percentile: float, key: str, work: Path) -> str:
    """`method`'s ranges of every calibrated tensor of `proto`, as quantize_static's calibration cache JSON."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    stats = statistics(proto, data, method != "minmax", batch, key)
    ranges = _method_ranges(stats, method, percentile)
    cache = work / "calibrated-ranges.json"
    save_tensors_data(
        TensorsData(
            getattr(CalibrationMethod, METHODS[method]),
            {
                n: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
                for n, (lo, hi) in ranges.items()
            },
        ),
        cache,
    )
    return cache.read_text()


def _ranges(proto: Any, data: Dataset, method: str, batch: int, percentile: float, work: Path) -> tuple:
    data_key = _data_key(proto.SerializeToString(deterministic=True), data)
    key = f"{data_key}:{method}:{percentile if method == 'percentile' else ''}"  # ranges do not depend on batching
    if key not in _MEMO:
        _MEMO[key] = (_computed(proto), _calibrate(proto, data, method, batch, percentile, data_key, work))
    return _MEMO[key]


def calibration_cache(
    root: Any, graph: Any, data: Dataset, method: str, batch: int, percentile: float, work: Path
) -> str:
    """Path of a quantize_static calibration cache (in `work`) with the ranges of `graph`'s tensors: the root's
    when `graph` computes nothing the root does not, else `graph`'s own. Memoized per process; `batch`: the most
    samples a calibration batch holds (fewer when the memory budget says so; the ranges are the same)."""
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
