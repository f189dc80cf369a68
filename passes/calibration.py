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
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployc.core import memory
from deployc.core.config import QuantizeSpec
from deployc.data.dataset import Dataset
from deployc.passes.activations import (
    guarded,
    keep_run,
    last_axis_absmax,
    per_sample_bytes,
    run_ahead,
    run_bytes,
    run_key,
    side_by_side,
    streamed,
)
from deployc.storage.files import write_text_atomic

# onnxruntime's quantize_static builds its Entropy calibrator with 128 bins and 128 quantized bins: the KL search
# then has one candidate, the whole range, and the result is MinMax's (benchmarks/peers/README.md). TensorRT's
# and PyTorch's histogram: 2048 bins searched for the 128-bin threshold of least KL divergence.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128
PERCENTILE_BINS = 2048  # onnxruntime's Percentile calibrator: 2048 bins of |x| over [min|x|, max|x|]
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}  # onnxruntime's names
# A tensor's histogram: HIST_BINS over [-top, top], top the smallest power of two above max|x|, built in the one pass
# that finds max|x|: when a batch raises top, pairs of bins merge, exactly (the bin of x is floor(x·HIST_BINS/2top),
# and halving a power-of-two scale halves that floor), so the counts do not depend on the batching. Folded at 0 they
# are Percentile's bins of |x| over [0, top], at least as fine as onnxruntime's 2048 over [0, max|x|]; Entropy's
# 2048 bins over [-max|x|, max|x|] take at least two of them each (entropy_range).
HIST_BINS = 4 * ENTROPY_BINS
_BLOCK = 1 << 18  # values binned at a time: the index arithmetic stays in cache
KEPT_BYTES = 64 << 20  # a partial pass's values kept for the next stage on the same graph (activations.keep_run)
_SERIES = 12  # terms of the log series in kl_threshold: e1/p <= 0.21, so the rest is below 1e-9 of a bin
_MEMO: dict[str, str] = {}  # graph + samples + method -> cache JSON
_STATS: dict[str, Statistics] = {}  # graph + samples -> what the passes over them measured (the last few)
_STATS_KEPT = 8


def _computed(proto: Any) -> frozenset[str]:
    """Every non-constant tensor a graph reads or writes ("" is an omitted optional input, no tensor)."""
    consts = {i.name for i in proto.graph.initializer}
    names = {t for n in proto.graph.node for t in (*n.input, *n.output) if t}
    return frozenset(names | {i.name for i in proto.graph.input}) - consts


def histograms_ahead(spec: QuantizeSpec) -> bool:
    """Whether a minmax calibration collects histograms as well: the build's remedy loop may try a histogram method
    (percentile, entropy), whose trial then reads its ranges off this pass instead of running its own. The min and
    max are the same (benchmarks/memory_time.py, doc-orientation: trial 1 4.7 -> 5.1 s, percentile's 3.5 -> 1.0 s)."""
    remedies = spec.remedies
    if remedies == "off" or "calibration" not in remedies.stages:
        return False
    return any(m != "minmax" for m in remedies.methods)


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


# ---- streaming passes: running min/max, then histograms over the range they found ---------------------------


@dataclass
class TensorStats:
    lo: float = math.inf
    hi: float = -math.inf
    hist: np.ndarray | None = None  # HIST_BINS counts over [-top, top]
    channel_absmax: np.ndarray | None = None  # max |x| per last-axis channel (inputs of weighted MatMul/Gemm only)
    top: float = 0.0  # a power of two above max|x| (0: no histogram yet)
    zeros: int = 0  # values seen while every value so far was 0 (binned when the histogram starts)

    @property
    def absmax(self) -> float:
        return max(abs(self.lo), abs(self.hi)) if self.seen else 0.0

    @property
    def seen(self) -> bool:
        return self.lo <= self.hi

    def add(self, value: np.ndarray, binner: _Binner | None) -> None:
        """Take a batch's values into the range and, with a binner, the histogram."""
        finite, lo, hi = _finite(value)
        if finite.size == 0:
            return
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        if binner is None:
            return
        if self.absmax == 0.0:
            self.zeros += finite.size
            return
        top = _power_above(self.absmax)
        if self.hist is None:
            self.hist, self.top = np.zeros(HIST_BINS, np.int64), top
            self.hist[HIST_BINS // 2] += self.zeros
        while self.top < top:
            self.hist, self.top = _halved(self.hist), self.top * 2
        binner.add(self.hist, finite, self.top)


@dataclass
class Statistics:
    tensors: dict[str, TensorStats] = field(default_factory=dict)
    histograms: bool = False


def _power_above(x: float) -> float:
    """The smallest power of two above x > 0."""
    return math.ldexp(1.0, math.frexp(x)[1])  # x = m·2^e with 0.5 <= m < 1


def _halved(hist: np.ndarray) -> np.ndarray:
    """The counts over twice the range: bin k of [-2top, 2top] holds bins 2k - n/2, 2k - n/2 + 1 of [-top, top]."""
    n = hist.size
    out = np.zeros_like(hist)
    out[n // 4 : 3 * n // 4] = hist.reshape(-1, 2).sum(axis=1)
    return out


def _finite(value: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The tensor's values as flat float32, NaN/inf left out (they carry no range), and their min and max."""
    values = np.ascontiguousarray(value, dtype=np.float32).reshape(-1)
    if values.size == 0:
        return values, math.inf, -math.inf
    lo, hi = float(values.min()), float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        values = values[np.isfinite(values)]
        lo, hi = (float(values.min()), float(values.max())) if values.size else (math.inf, -math.inf)
    return values, lo, hi


class _Binner:
    """Counts of float32 values into the bins of [-top, top] (a power of two), a block at a time (buffers reused):
    bin floor(x·n/2top) + n/2, exact, as the scale is a power of two."""

    def __init__(self) -> None:
        self.scaled = np.empty(_BLOCK, np.float32)
        self.index = np.empty(_BLOCK, np.intp)

    def add(self, hist: np.ndarray, values: np.ndarray, top: float) -> None:
        n = hist.size
        scale, offset = np.float32(n / (2 * top)), np.float32(n // 2)
        for start in range(0, values.size, _BLOCK):
            block = values[start : start + _BLOCK]
            scaled, index = self.scaled[: block.size], self.index[: block.size]
            np.multiply(block, scale, out=scaled)
            np.floor(scaled, out=scaled)
            np.add(scaled, offset, out=index, casting="unsafe")  # integers below 2^24: exact
            hist += np.bincount(index, minlength=n)


def _minmax_pass(proto: Any, data: Dataset, batch: int) -> Statistics:
    """onnxruntime's MinMax calibrator (ReduceMin/ReduceMax inside the graph, so no activation leaves the run) over
    `data` in batches of at most `batch` samples that fit the memory budget."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    from deployc.core.ort import CalibrationReader

    # its reductions run after the graph's own nodes, so a batch holds every calibrated tensor, as when exposed
    size = guarded(per_sample_bytes(proto, calibrated_tensors(proto), data), data, "calibration", batch)
    with tempfile.TemporaryDirectory(prefix="deployc-calibrate-") as work:
        onnx.save(proto, f"{work}/model.onnx")
        calibrator = create_calibrator(
            f"{work}/model.onnx",
            sorted({n.op_type for n in proto.graph.node}),
            augmented_model_path=f"{work}/augmented.onnx",
            calibrate_method=CalibrationMethod.MinMax,
        )
        calibrator.collect_data(CalibrationReader(data, size))
        found = calibrator.compute_data()
    out = Statistics()
    for name, td in found.data.items():
        low, high = td.range_value
        out.tensors[name] = TensorStats(float(np.min(low)), float(np.max(high)))
    return out


def _histogram_pass(
    proto: Any,
    names: list[str],
    data: Dataset,
    batch: int,
    histograms: bool = True,
    keep: bool = False,
    fed: tuple[str, set[str]] | None = None,
) -> Statistics:
    """The min, max and (with `histograms`) histogram of each named tensor, in one run of the graph over `data`
    (unoptimised, as onnxruntime's calibrators run it: the same values), streamed in batches of at most `batch`
    samples that fit the memory budget with every named tensor of a batch held at once. `keep`: the values are kept
    for the next stage (activations.keep_run) when they take at most KEPT_BYTES. `fed`: (the run key of a graph
    `proto` rewrites, the tensors of `proto` that hold that graph's values): when that graph's kept run holds the
    inputs the named tensors are computed from, only the nodes between them run, fed its values (see _fed_runs).
    A full pass of a graph keeps, within what the budget lets stages keep, the inputs of its weighted ops (what
    bias correction measures: it then runs no float graph of its own) and of the producers of its weighted
    MatMul/Gemm nodes (what smoothing rescales, for a smoothing trial's pass to be fed from)."""
    from deployc.passes.bias_correction import measured_inputs
    from deployc.passes.onnx_util import weighted_matmul_inputs

    out = Statistics({n: TensorStats() for n in names}, histograms=histograms)
    binners = threading.local()  # a binner's buffers are its thread's
    # what a smoothing trial measures of the same graph, at a small cost here: no run of its own
    smoothed = set(weighted_matmul_inputs(proto)) & set(names) if histograms else set()
    runs = _fed_runs(proto, names, data, fed) if fed is not None else None
    if runs is None:
        per_sample = per_sample_bytes(proto, names, data)
        size = guarded(per_sample, data, "calibration", batch)
        runs = (size.sizes, streamed(proto, names, data, "calibration", size))
        if histograms and not size.probe and memory.room_for(2 * per_sample * size.size):
            runs = (size.sizes, run_ahead(runs[1]))  # binning a batch overlaps the next one's run
    sizes, batches = runs
    wanted = set(names) if keep else (_smoothing_inputs(proto, smoothed) | measured_inputs(proto)) & set(names)
    # a partial pass keeps a little; a full one what the budget lets stages keep (it replaces the run kept before),
    # and nothing when the graph's shapes say the run's values would not fit (a large model's: bias correction runs)
    most = KEPT_BYTES if keep else memory.current().limit // memory.KEEP_SHARE - memory.kept_bytes()
    if not keep and wanted and run_bytes(proto, wanted, data) > most:
        wanted = set()
    kept: dict[str, list[np.ndarray]] | None = {n: [] for n in wanted} if wanted else None

    def measure(item: tuple[str, np.ndarray]) -> None:  # a tensor's own statistics only: side by side
        name, value = item
        if histograms and not hasattr(binners, "binner"):
            binners.binner = _Binner()
        stats = out.tensors[name]
        stats.add(value, binners.binner if histograms else None)
        if name in smoothed and value.size:
            stats.channel_absmax = last_axis_absmax(value, stats.channel_absmax)

    kept_bytes = 0
    for values in batches:
        kept_bytes += sum(values[n].nbytes for n in wanted)
        if kept is not None and kept_bytes <= most:
            for name in wanted:
                kept[name].append(values[name])
        else:
            kept = None
        side_by_side(measure, values.items())
    if kept is not None:
        keep_run(run_key(proto, data), sizes, kept)  # a Guard's sizes are final once its batches ran
    return out


def _smoothing_inputs(proto: Any, smoothed: set[str]) -> set[str]:
    """The weighted ops' inputs smoothing rescales and the non-constant inputs of their producers (where it folds
    the division): the tensors a smoothing trial's graph computes as this one does, at the edge of what it changes."""
    from deployc.passes.onnx_util import producers

    consts = {i.name for i in proto.graph.initializer}
    writer = producers(proto.graph.node)
    inputs = {i for t in smoothed if t in writer for i in writer[t].input if i and i not in consts}
    return set(smoothed) | inputs


def _fed_runs(proto: Any, names: list[str], data: Dataset, fed: tuple[str, set[str]]) -> tuple[list[int], Any] | None:
    """(batch sizes, {name: value} per batch) of the named tensors computed by the nodes of `proto` between them
    and tensors the run fed[0] kept (activations.keep_run) whose values `proto` computes as that graph did (fed[1]),
    the sub-graph fed those values batch by batch (unoptimised: the same kernels, the same values); None when the
    kept run does not hold all it needs (then the whole graph runs)."""
    import onnx

    from deployc.passes.activations import kept_batches
    from deployc.passes.onnx_util import producers
    from deployc.passes.sensitivity import tensor_types

    key, same = fed
    found = kept_batches(key)
    if found is None or any(a.type == onnx.AttributeProto.GRAPH for n in proto.graph.node for a in n.attribute):
        return None  # nothing kept, or sub-graphs reading outer tensors (If/Loop/Scan): the whole graph runs
    sizes, have = found[0], {t: v for t, v in found[1].items() if t in same}
    consts = {i.name for i in proto.graph.initializer}
    writer = producers(proto.graph.node)
    needed, boundary, todo = set(), set(), list(names)
    while todo:
        t = todo.pop()
        if not t or t in consts or t in boundary:
            continue
        if t in have:
            boundary.add(t)
            continue
        node = writer.get(t)
        if node is None:  # a graph input: the kept run does not hold it
            return None
        if id(node) not in needed:
            needed.add(id(node))
            todo.extend(node.input)
    # assembled here, not by onnx.utils.Extractor: it needs a value_info for every boundary tensor, which a rewritten
    # (smoothed) graph's new tensors lack
    types = tensor_types(proto)
    nodes = [n for n in proto.graph.node if id(n) in needed]  # in the graph's (topological) order
    read = {i for n in nodes for i in n.input}

    def typed(t: str) -> Any:
        return onnx.helper.make_tensor_value_info(t, types.get(t, onnx.TensorProto.FLOAT), None)

    graph = onnx.helper.make_graph(
        nodes,
        "fed",
        [typed(t) for t in sorted(boundary)],
        [typed(t) for t in names],
        [i for i in proto.graph.initializer if i.name in read],
    )
    sub = onnx.helper.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    values = {t: have[t] for t in boundary}

    def batches() -> Any:
        from deployc.core.ort import session

        sess = session(sub, optimize=False, spin=False)
        for i in range(len(sizes)):
            yield dict(zip(names, sess.run(names, {t: v[i] for t, v in values.items()})))

    return sizes, batches()


def memoized_channel_absmax(proto: Any, data: Dataset, names: list[str]) -> dict[str, np.ndarray] | None:
    """max |x| per last-axis channel of the named tensors, when a histogram pass over this graph and these samples
    measured them (smoothquant.channel_absmax's numbers), else None."""
    have = _STATS.get(run_key(proto, data))
    if have is None or not all(n in have.tensors and have.tensors[n].channel_absmax is not None for n in names):
        return None
    return {n: have.tensors[n].channel_absmax for n in names}


def collect(proto: Any, data: Dataset, histograms: bool, batch: int = 64) -> Statistics:
    """Every calibrated tensor's min/max over `data` and, with `histograms`, its histogram (one pass either way).
    Streamed in batches that fit the memory budget; the result does not depend on them."""
    if histograms:
        return _histogram_pass(proto, calibrated_tensors(proto), data, batch)
    return _minmax_pass(proto, data, batch)


# ---- each method's ranges from the statistics ----------------------------------------------------------------


def percentile_range(stats: TensorStats, percentile: float) -> tuple[float, float]:
    """onnxruntime's symmetric Percentile (HistogramCollector.compute_percentile) on the histogram of |x| over
    [0, top]: t = the left edge of the bin where the CDF reaches `percentile`, clipped to the tensor's own min and
    max. (onnxruntime's grid is 2048 bins over [min|x|, max|x|]; ours is at least as fine.)"""
    if stats.hist is None or stats.absmax == 0.0:
        return stats.lo, stats.hi
    half = stats.hist.size // 2
    folded = stats.hist[half:] + stats.hist[half - 1 :: -1]
    with np.errstate(over="ignore"):  # top = 2^128 (a -FLT_MAX mask) is inf in float32: clipped to max below
        edges = np.linspace(0.0, stats.top, folded.size + 1, dtype=np.float32)
    cdf = np.cumsum(folded / folded.sum())
    t = float(edges[min(int(np.searchsorted(cdf, percentile / 100.0)), folded.size)])
    return max(-t, stats.lo), min(t, stats.hi)


def entropy_range(stats: TensorStats) -> tuple[float, float]:
    """onnxruntime's Entropy (HistogramCollector.compute_entropy): the 2048-bin histogram over [-max|x|, max|x|] and
    the threshold of least KL divergence to its 128-bin quantization, clipped to the tensor's min and max. The
    counts are our finer bins' (at least two to each of those), those straddling an edge split in proportion."""
    if stats.hist is None or stats.absmax == 0.0:
        return stats.lo, stats.hi
    edges = np.linspace(-stats.absmax, stats.absmax, ENTROPY_BINS + 1, dtype=np.float32)
    start, end = kl_threshold(entropy_histogram(stats), ENTROPY_QUANTIZED_BINS)
    return max(float(edges[start]), stats.lo), min(float(edges[end]), stats.hi)


def entropy_histogram(stats: TensorStats) -> np.ndarray:
    """The counts of ENTROPY_BINS bins over [-max|x|, max|x|] from the tensor's histogram: the cumulative counts at
    their edges, interpolated within our bins (at least two to each of theirs) and rounded."""
    edges = np.linspace(-stats.absmax, stats.absmax, ENTROPY_BINS + 1, dtype=np.float32).astype(np.float64)
    fine = np.linspace(-stats.top, stats.top, stats.hist.size + 1)
    below = np.rint(np.interp(edges, fine, np.concatenate([[0], np.cumsum(stats.hist)])))
    return np.diff(below).astype(np.int64)


def kl_threshold(hist: np.ndarray, quantized_bins: int) -> tuple[int, int]:
    """HistogramCollector.get_entropy_threshold's search: the (start, end) bin edges of the centred slice of `hist`
    whose `quantized_bins`-bin quantization (both smoothed by quant_utils.smooth_distribution) has least KL
    divergence."""
    start, end, kl = kl_divergences(hist, quantized_bins)
    # get_entropy_threshold keeps each divergence in the histogram edges' float32: equal there, the first wins
    best = int(np.argmin(kl.astype(np.float32)))
    return int(start[best]), int(end[best])


def kl_divergences(hist: np.ndarray, quantized_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every centred slice's (start, end) bin edges and KL divergence, as kl_threshold searches them (inf: none).
    HistogramCollector's Python loop costs ~1 s a tensor; here every candidate at once, in float64, from prefix sums:
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
    return start, end, np.where((nonzero > 0) & (q_nonzero > 0) & (total > 0), kl, np.inf)


def _method_ranges(stats: Statistics, method: str, percentile: float) -> dict[str, tuple[float, float]]:
    seen = [(name, s) for name, s in stats.tensors.items() if s.seen]
    if method == "percentile":
        return {name: percentile_range(s, percentile) for name, s in seen}
    if method == "entropy":  # each tensor's KL search is its own: side by side
        return dict(zip((name for name, _ in seen), side_by_side(entropy_range, [s for _, s in seen])))
    return {name: (s.lo, s.hi) for name, s in seen}


# ---- the shared cache --------------------------------------------------------------------------------------


def statistics(
    proto: Any,
    data: Dataset,
    histograms: bool,
    batch: int = 64,
    key: str | None = None,
    names: list[str] | None = None,
    fed: tuple[str, set[str]] | None = None,
) -> Statistics:
    """collect()'s result for this graph and these samples, memoized: onnxruntime's minmax pass for minmax, one
    histogram pass (which finds the same min and max) once a method needs histograms; every method is read off
    them. `names`: only these tensors (a few of a large graph's), else every calibrated tensor; `fed`: see
    _histogram_pass."""
    key = key or run_key(proto, data)
    if names is not None:
        key = f"{key}:" + hashlib.sha256("\0".join(sorted(names)).encode()).hexdigest()
    have = _STATS.pop(key, None)
    if have is None or (histograms and not have.histograms):
        if histograms or names is not None:  # a few tensors' values: kept for bias correction (same graph)
            have = _histogram_pass(
                proto, sorted(names or calibrated_tensors(proto)), data, batch, histograms, names is not None, fed
            )
        else:
            have = _minmax_pass(proto, data, batch)
    while len(_STATS) >= _STATS_KEPT:
        _STATS.pop(next(iter(_STATS)))
    _STATS[key] = have  # most recently used last
    return have


def _calibrate(
    proto: Any, data: Dataset, method: str, batch: int, percentile: float, key: str, work: Path, ahead: bool
) -> str:
    """`method`'s ranges of every calibrated tensor of `proto`, as quantize_static's calibration cache JSON;
    `ahead`: histograms collected for minmax too (histograms_ahead)."""
    return _cache_text(statistics(proto, data, method != "minmax" or ahead, batch, key), method, percentile, work)


def _cache_text(stats: Statistics, method: str, percentile: float, work: Path) -> str:
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

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


def _ranges(proto: Any, data: Dataset, method: str, batch: int, percentile: float, work: Path, ahead: bool) -> str:
    data_key = run_key(proto, data)
    # ranges depend neither on batching nor on whether histograms were collected ahead
    key = f"{data_key}:{method}:{percentile if method == 'percentile' else ''}"
    if key not in _MEMO:
        _MEMO[key] = _calibrate(proto, data, method, batch, percentile, data_key, work, ahead)
    return _MEMO[key]


def calibration_cache(
    root: Any,
    graph: Any,
    data: Dataset,
    method: str,
    batch: int,
    percentile: float,
    work: Path,
    changed: frozenset[str] | None = None,
    ahead: bool = False,
) -> str:
    """Path of a quantize_static calibration cache (in `work`) with the ranges of `graph`'s tensors: the root's
    when `graph` computes nothing the root does not, else `graph`'s own. Memoized per process; `batch`: the most
    samples a calibration batch holds (fewer when the memory budget says so; the ranges are the same).

    `changed`: tensors whose values a rewrite of the root changed (smoothing's rescaled tensors); `graph`'s own
    ranges are then those of the root for every tensor upstream of them and of the tensors it adds, and measured
    on `graph` for the rest (only those are exposed): what a calibration of `graph` alone gives, at a fraction.

    `ahead`: a minmax calibration collects histograms as well, for a later trial's method (histograms_ahead)."""
    if changed is not None:
        text = _partial_ranges(root, graph, changed, data, method, batch, percentile, work, ahead)
    else:
        text = _ranges(ranges_graph(root, graph), data, method, batch, percentile, work, ahead)
    cache = work / f"ranges-{method}.json"
    write_text_atomic(cache, text)
    return str(cache)


def ranges_graph(root: Any, graph: Any) -> Any:
    """The graph calibration_cache calibrates for `graph`: the root when `graph` computes nothing the root does not
    (its ranges serve), else `graph` itself."""
    return root if _computed(graph) <= _computed(root) else graph


def downstream(proto: Any, seeds: set[str]) -> set[str]:
    """`seeds` and every tensor computed from one of them (ONNX nodes are in topological order)."""
    out = set(seeds)
    for n in proto.graph.node:
        if any(i in out for i in n.input):
            out.update(o for o in n.output if o)
    return out


def changed_tensors(root: Any, graph: Any, changed: frozenset[str]) -> set[str]:
    """The tensors of `graph`, a rewrite of `root`, whose values may differ from the root's: those it adds, those
    in `changed`, and every tensor computed from them. onnxruntime's pre-processing may fuse a changed tensor away
    (MatMul + Add -> Gemm): the fused node reads the rescaled weight, so the outputs of nodes reading an
    initializer the root lacks or holds otherwise count too."""
    computed = _computed(graph)
    return downstream(graph, (computed - _computed(root)) | (set(changed) & computed) | _reweighted(root, graph))


def computed_otherwise(root: Any, graph: Any, changed: frozenset[str] = frozenset()) -> set[str]:
    """changed_tensors, and every tensor computed from an output of a node of `graph` that is not the root's node
    (op, inputs, attributes): a fusion that keeps an output's name may compute it in another order. What is left is
    computed as the root computes it, bit for bit (the same kernels, unoptimised)."""
    from deployc.passes.onnx_util import producers

    theirs = producers(root.graph.node)

    def same(n: Any) -> bool:
        m = theirs.get(n.output[0]) if n.output else None
        return m is not None and (m.op_type, m.domain, list(m.input), list(m.output), list(m.attribute)) == (
            n.op_type,
            n.domain,
            list(n.input),
            list(n.output),
            list(n.attribute),
        )

    other = {o for n in graph.graph.node if not same(n) for o in n.output if o}
    return downstream(graph, changed_tensors(root, graph, changed) | other)


def _reweighted(root: Any, graph: Any) -> set[str]:
    """Outputs of `graph`'s nodes that read an initializer the root has not, or has with other values."""
    from onnx import numpy_helper

    theirs = {i.name: i for i in root.graph.initializer}

    def same(i: Any) -> bool:  # by value: a rewrite may store an unchanged array otherwise (raw_data, float_data)
        if i.name not in theirs:
            return False
        a, b = numpy_helper.to_array(i), numpy_helper.to_array(theirs[i.name])
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)

    differ = {i.name for i in graph.graph.initializer if not same(i)}
    return {o for n in graph.graph.node if any(i in differ for i in n.input) for o in n.output if o}


def _partial_ranges(
    root: Any,
    graph: Any,
    changed: frozenset[str],
    data: Dataset,
    method: str,
    batch: int,
    percentile: float,
    work: Path,
    ahead: bool = False,
) -> str:
    """calibration_cache's ranges of `graph` from the root's statistics and a pass over `graph`'s tensors whose
    values differ from the root's, or that the root's calibration does not measure (see calibration_cache)."""
    graph_key = run_key(graph, data)
    key = f"{graph_key}:{method}:{percentile if method == 'percentile' else ''}"
    if key in _MEMO:
        return _MEMO[key]
    wanted, computed = calibrated_tensors(graph), _computed(graph)
    fresh = downstream(graph, (computed - _computed(root)) | (set(changed) & computed))
    root_key = run_key(root, data)
    histograms = method != "minmax"
    base = statistics(root, data, histograms or ahead, batch, root_key) if set(wanted) - fresh else Statistics()
    fresh |= set(wanted) - set(base.tensors)  # tensors the root's calibration does not measure (typed here only)
    # computed from what the root's pass kept where `graph` computes as the root does (the rest's inputs)
    same = (computed & _computed(root)) - fresh
    own = statistics(graph, data, histograms, batch, graph_key, [n for n in wanted if n in fresh], (root_key, same))
    tensors = {n: own.tensors[n] if n in fresh else base.tensors[n] for n in wanted}
    _MEMO[key] = _cache_text(Statistics(tensors, histograms), method, percentile, work)
    return _MEMO[key]


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
