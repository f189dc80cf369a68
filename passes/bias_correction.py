"""Bias correction of an int8 Q/DQ graph: each int8 weighted op's bias absorbs the mean shift its quantization
adds to its output, measured on the float inputs it would see (NNCF's fast bias correction, Nagel et al. 2019).

For an op y = W·x + b whose weight and input are quantized, the expected output moves by
E[W_q·Q(x)] − E[W·x] = (W_q − W)·μ + W_q·ε per output channel, with μ the per-channel mean of the float input
and ε the mean of Q(x) − x (rounding and clipping of the input, a percentile range's clipped tail). Both are
measured once on calibration samples through the float graph; the bias then holds b − that shift. Local by
design: a correction chasing errors accumulated through the whole quantized network (sequential bias correction)
made YOLOv8n's outputs worse here (means matched, errors of deep layers grew 2-3x: benchmarks/peers/README.md).

Ops corrected: Conv/ConvTranspose/Gemm with a bias input (an int32 DequantizeLinear from onnxruntime's
quantizer, or a float initializer on the tensorrt placement) and MatMul followed by an Add of a float constant;
others are left as they are and counted.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployc.core.ort import session
from deployc.data.dataset import Dataset
from deployc.passes.activations import batch_size, per_sample_bytes, run_key, side_by_side
from deployc.passes.onnx_util import copied, producers

INT32 = (-(2**31), 2**31 - 1)
FEATURE_AXIS = {"Conv": 1, "ConvTranspose": 1, "Gemm": -1, "MatMul": -1}  # the input axis the weight contracts


@dataclass(frozen=True)
class BiasCorrection:
    """What bias correction changed: ops corrected, ops it could not correct (and why), largest relative shift."""

    corrected: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    largest_shift: float = 0.0  # max |shift| / max |bias| over corrected ops

    def to_json(self) -> dict[str, Any]:
        reasons: dict[str, list[str]] = {}
        for node, why in sorted(self.skipped.items()):
            reasons.setdefault(why, []).append(node)
        return {
            "corrected": len(self.corrected),
            "skipped": {why: {"count": len(n), "first": n[0]} for why, n in reasons.items()},
            "largest_relative_shift": round(self.largest_shift, 4),
        }


@dataclass(frozen=True)
class _Site:
    node: Any
    weight: np.ndarray  # float weight, as the fp32 graph has it
    weight_q: np.ndarray  # dequantized int8 weight
    source: str  # the float tensor the op's input quantizes
    q_node: Any  # its QuantizeLinear
    bias: tuple[str, Any]  # ("int32", its DequantizeLinear) | ("float", initializer name)


def measured_inputs(proto: Any) -> set[str]:
    """The activations the ops bias correction corrects read beside a constant weight (their input 0): what it
    measures, and what a calibration pass keeps for it (calibration._histogram_pass)."""
    inits = {i.name for i in proto.graph.initializer}
    return {
        n.input[0]
        for n in proto.graph.node
        if n.op_type in FEATURE_AXIS and len(n.input) > 1 and n.input[0] not in inits and n.input[1] in inits
    }


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _dequantized(dq: Any, values: dict[str, np.ndarray]) -> np.ndarray | None:
    """The float values of a DequantizeLinear of a constant (per-tensor or along its axis)."""
    if dq.input[0] not in values or dq.input[1] not in values:
        return None
    q = values[dq.input[0]].astype(np.float64)
    scale = values[dq.input[1]].astype(np.float64)
    zero = values[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] in values else 0.0
    if np.ndim(scale) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[_attr(dq, "axis", 1)] = -1
        scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
    return (q - zero) * scale


def _sites(qdq: Any, fp32: Any) -> tuple[list[_Site], dict[str, str]]:
    """The weighted ops of `qdq` whose int8 weight and quantized input can be traced to `fp32` (same node names)."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    float_weights = {i.name: i for i in fp32.graph.initializer}
    float_nodes = {n.name: n for n in fp32.graph.node if n.name}
    fp32_tensors = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    producer = producers(qdq.graph.node)
    readers: dict[str, list[Any]] = {}
    for n in qdq.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    sites, skipped = [], {}
    for n in qdq.graph.node:
        if n.op_type not in FEATURE_AXIS or len(n.input) < 2:
            continue
        dq_x, dq_w = producer.get(n.input[0]), producer.get(n.input[1])
        if dq_x is None or dq_w is None or {dq_x.op_type, dq_w.op_type} != {"DequantizeLinear"}:
            continue  # not an int8 op
        q = producer.get(dq_x.input[0])
        original = float_nodes.get(n.name)
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in fp32_tensors or original is None:
            skipped[n.name] = "its input or weight cannot be traced to the float graph"
            continue
        w_name = original.input[1] if len(original.input) > 1 else ""
        weight_q = _dequantized(dq_w, values)
        if w_name not in float_weights or weight_q is None:
            skipped[n.name] = "its float weight is not a constant"
            continue
        weight = numpy_helper.to_array(float_weights[w_name]).astype(np.float64)
        bias = _bias(n, producer, readers, values)
        if bias is None:
            skipped[n.name] = "no bias to correct (no bias input, or a MatMul not followed by an Add of a constant)"
            continue
        if weight.shape != weight_q.shape:
            skipped[n.name] = "its weight changed shape in quantization"
            continue
        sites.append(_Site(n, weight, weight_q, q.input[0], q, bias))
    return sites, skipped


def _bias(node: Any, producer: dict[str, Any], readers: dict[str, list[Any]], values: dict) -> tuple | None:
    if node.op_type == "MatMul":
        after = readers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Add":
            other = [i for i in after[0].input if i != node.output[0]]
            if len(other) == 1 and other[0] in values and values[other[0]].dtype == np.float32:
                return ("float", other[0])
        return None
    if len(node.input) < 3 or not node.input[2]:
        return None
    b = node.input[2]
    dq = producer.get(b)
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in values and dq.input[1] in values:
        return ("int32", dq)
    if b in values and values[b].dtype == np.float32:
        return ("float", b)
    return None


def _q_params(q: Any, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int, int]:
    scale = values[q.input[1]].astype(np.float64)
    zp = values.get(q.input[2]) if len(q.input) > 2 else None
    kind = zp.dtype if zp is not None else np.dtype(np.uint8)
    info = np.iinfo(kind)
    return scale, (zp.astype(np.float64) if zp is not None else np.zeros(())), int(info.min), int(info.max)


# (float graph + samples + batch, source tensor, feature axis, its quantizer's scale/zero point/bounds or None) ->
# (sum over the samples of x per channel, or of Q(x) - x; values summed): every remedy trial corrects the same float
# graph on the same samples, and a trial that keeps the inputs' ranges (granularity, fallback) measures nothing anew
_SUMS: dict[tuple, tuple[np.ndarray, int]] = {}
# float graphs whose sums are kept: a trial's pre-processed graph and the graph calibration ran (whose kept values
# give the sums of the tensors both compute alike), a smoothing trial's two more
_SUMS_GRAPHS = 4
# float graph + samples + batch -> every source's values, batch by batch, when they fit what the memory budget lets
# a stage keep (core/memory.keep): a trial whose ranges change (calibration method, symmetry) then measures its ε
# from them, without running the float graph again
_HELD: dict[str, dict[str, list[np.ndarray]]] = {}
_OWNER = "bias correction"


def _graph_key(fp32: Any, data: Dataset, batch: int) -> str:
    return run_key(fp32, data, batch)


def _quantizer_key(q: Any, values: dict) -> tuple:
    scale, zp, lo, hi = _q_params(q, values)
    return (scale.tobytes(), np.asarray(zp).tobytes(), lo, hi)


def _keep(*current: str) -> None:
    """Make room for the sums of the `current` graphs: the sums of the oldest others go beyond _SUMS_GRAPHS."""
    graphs = [g for g in dict.fromkeys(k[0] for k in _SUMS) if g not in current]
    for old in graphs[: max(0, len(graphs) + len(set(current)) - _SUMS_GRAPHS)]:
        for k in [k for k in _SUMS if k[0] == old]:
            del _SUMS[k]
    summed = {k[0] for k in _SUMS} | set(current)
    for old in [g for g in _HELD if g not in summed]:  # held values go with their graph's sums
        del _HELD[old]
    _account()


def _account() -> None:
    """Reserve what _HELD takes in the memory budget (dropped when it does not fit)."""
    from deployc.core import memory

    size = sum({id(v): v.nbytes for h in _HELD.values() for vs in h.values() for v in vs}.values())  # once each
    if not _HELD or not memory.keep(_OWNER, size, _HELD.clear):
        _HELD.clear()
        memory.release(_OWNER)


def _holdable(fp32: Any, names: list[str], data: Dataset) -> bool:
    """Whether the values of `names` over all of `data` fit what the budget lets a stage keep besides what is
    kept already (estimated from the graph's shapes)."""
    from deployc.core import memory
    from deployc.passes.activations import run_bytes

    return run_bytes(fp32, names, data) + memory.kept_bytes() <= memory.current().limit // memory.KEEP_SHARE


def _held_batches(
    keys: list[tuple], runs: dict[str, Any], data: Dataset, batch: int
) -> list[dict[str, np.ndarray]] | None:
    """The values of the keys' sources, batch by batch: held here (each under its key's graph), or those the last
    run of their key's graph (`runs`: graph key -> float graph) kept in the same batches (activations.kept_run: a
    calibration pass over the graph keeps its weighted ops' inputs); None unless all are."""
    from deployc.passes.activations import kept_run

    sources = {k[1]: _HELD[k[0]][k[1]] for k in keys if k[1] in _HELD.get(k[0], {})}
    rest = {k for k in keys if k[1] not in sources}
    graphs = {k[0] for k in rest}
    if len(graphs) > 1:  # only one run is kept at a time
        return None
    if rest:
        sizes = [data.batch_len(feed) for feed, _ in data.batches(batch)]
        found = kept_run(run_key(runs[graphs.pop()], data), {k[1] for k in rest}, sizes)
        if found is None:
            return None
        sources.update(found)
    count = len(next(iter(sources.values())))
    return [{name: values[i] for name, values in sources.items()} for i in range(count)]


def _runs(
    fp32: Any,
    graph: str,
    names: list[str],
    data: Dataset,
    batch: int,
    hold: bool,
    alike: tuple[str, set[str]] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The values of `names` (tensors of `fp32`) batch by batch; with `hold`, kept in _HELD[graph] as well, and
    those not in alike[1] under alike[0] too (the graph whose sums they give: see correct_biases' same_as)."""
    import onnx

    exposed = copied(fp32)
    have = {o.name for o in exposed.graph.output} | {i.name for i in exposed.graph.input}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in have)
    # the machine's cores, as calibration's run (one thread took twice as long; the zoo's artifacts hash the same)
    sess = session(exposed, optimize=False, spin=False)
    inputs = {i.name for i in sess.get_inputs()}
    held: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed, _ in data.batches(batch):
        feed = {k: v for k, v in feed.items() if k in inputs}
        wanted = [t for t in names if t not in feed]
        fetched = dict(zip(wanted, sess.run(wanted, feed))) if wanted else {}
        fetched.update({k: v for k, v in feed.items() if k in names})
        if hold:
            for name in names:
                held[name].append(fetched[name])
        yield fetched
    if hold:
        _HELD[graph] = held
        if alike is not None and alike[0] != graph:  # the same arrays: held once in the budget (_account)
            _HELD[alike[0]] = {n: v for n, v in held.items() if n not in alike[1]}
        _account()


CHUNK = 1 << 18  # values converted to float64 at a time: the scratch stays in cache


def _channel_sums(x: np.ndarray, axis: int, q: tuple[np.ndarray, np.ndarray, int, int] | None) -> np.ndarray:
    """Per index of `axis`: the sum of x (q None), or of its per-tensor quantizer's clipped integer levels less
    the zero point, clip(round(x/scale) + zp, lo, hi) - zp, which sum exactly in float64 (they are integers): the
    sum of Q(x) - x is scale times theirs less the sum of x, without a float sum per value. x/scale is divided in float64, as the quantizer's rounding
    needs, a chunk at a time. A per-axis quantizer: the sum of Q(x) - x itself."""
    if q is not None and np.ndim(q[0]) != 0:
        scale, zp, lo, hi = q
        x64 = np.asarray(x, np.float64)
        err = (np.clip(np.round(x64 / scale) + zp, lo, hi) - zp) * scale - x64
        return err.sum(axis=tuple(a for a in range(x.ndim) if a != axis))
    pre, channels, post = math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1 :])
    view = np.ascontiguousarray(x).reshape(pre, channels, post)
    rows = max(1, CHUNK // max(channels * post, 1))
    step = channels if channels * post <= CHUNK else max(1, CHUNK // max(post, 1))
    scratch = np.empty(min(pre, rows) * min(step, channels) * post, np.float64)
    out = np.zeros(channels, np.float64)
    for r in range(0, pre, rows):
        for c in range(0, channels, step):
            block = view[r : r + rows, c : c + step]
            buf = scratch[: block.size].reshape(block.shape)
            if q is None:
                np.copyto(buf, block)
            else:
                scale, zp, lo, hi = q
                np.divide(block, scale, out=buf)
                np.rint(buf, out=buf)  # half to even, as np.round
                np.clip(buf, lo - zp, hi - zp, out=buf)  # level - zp: rint commutes with a clip to integers
            out[c : c + step] += buf.sum(axis=(0, 2))
    return out


def _input_means(
    fp32: Any,
    sites: list[_Site],
    qdq_values: dict,
    data: Dataset,
    batch: int,
    same_as: tuple[Any, set[str]] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per op: (μ, ε) over its feature axis — the float input's mean, and the mean of Q(x) − x. Memoized per input
    and quantizer (_SUMS): one run of the float graph computes only the sums no earlier trial did; `same_as`: see
    correct_biases."""

    graph = _graph_key(fp32, data, batch)
    other, differ = (_graph_key(same_as[0], data, batch), same_as[1]) if same_as is not None else (graph, set())
    _keep(graph, other)
    keys = {}
    for s in sites:
        axis, of = FEATURE_AXIS[s.node.op_type], graph if s.source in differ else other
        keys[s.node.name] = ((of, s.source, axis, None), (of, s.source, axis, _quantizer_key(s.q_node, qdq_values)))
    missing = {k: s for s in sites for k in keys[s.node.name] if k not in _SUMS}
    if missing:
        runs = {graph: fp32} if same_as is None else {graph: fp32, other: same_as[0]}
        batches: Iterable[dict[str, np.ndarray]] | None = _held_batches(list(missing), runs, data, batch)
        if batches is None:
            every = sorted({s.source for s in sites})
            hold = graph not in _HELD and _holdable(fp32, every, data)
            names = every if hold else sorted({k[1] for k in missing})
            batches = _runs(fp32, graph, names, data, batch, hold, (other, differ))
        sums: dict[tuple, list[Any]] = {key: [0.0, 0] for key in missing}

        def measure(fetched: dict[str, np.ndarray], item: tuple[tuple, _Site]) -> None:  # a key's own sums only
            key, s = item
            x = fetched[s.source]
            q = None if key[3] is None else _q_params(s.q_node, qdq_values)
            summed = _channel_sums(x, key[2] % x.ndim, q)
            acc = sums[key]
            acc[0] = acc[0] + summed
            acc[1] += x.size // x.shape[key[2] % x.ndim]

        for fetched in batches:
            side_by_side(functools.partial(measure, fetched), missing.items())  # the keys' sums side by side
        for key, (total, n) in sorted(sums.items(), key=lambda kv: kv[0][3] is not None):  # sums of x first
            scale = None if key[3] is None else _q_params(missing[key].q_node, qdq_values)[0]
            if scale is not None and np.ndim(scale) == 0:  # per-tensor: the integer levels' sum, scaled
                total = total * scale - _SUMS[key[:3] + (None,)][0]  # sum of Q(x) - x
            _SUMS[key] = (total, n)
    out = {}
    for s in sites:
        (x_sum, n), (err_sum, _) = (_SUMS[k] for k in keys[s.node.name])
        out[s.node.name] = (x_sum / n, err_sum / n)
    return out


def _shift(site: _Site, mu: np.ndarray, eps: np.ndarray) -> np.ndarray | None:
    """E[W_q·Q(x)] − E[W·x] per output channel, with per-channel input means (None: shapes it cannot read)."""
    w, wq, op = site.weight, site.weight_q, site.node.op_type
    if op in ("Conv", "ConvTranspose"):
        group = _attr(site.node, "group", 1)
        if op == "ConvTranspose":  # weight [C_in, C_out/g, k...]: output channel o of group g reads C_in/g inputs
            per = w.shape[0] // group
            wsum, wqsum = w.reshape(group, per, w.shape[1], -1).sum(-1), wq.reshape(group, per, wq.shape[1], -1).sum(-1)
            m, e = mu.reshape(group, per), eps.reshape(group, per)
            out = np.einsum("gco,gc->go", wqsum, m + e) - np.einsum("gco,gc->go", wsum, m)
            return out.reshape(-1)
        out_ch, per = w.shape[0], w.shape[1]
        if mu.shape[0] != per * group:
            return None
        wsum, wqsum = w.reshape(out_ch, per, -1).sum(-1), wq.reshape(out_ch, per, -1).sum(-1)
        m, e = mu.reshape(group, per), eps.reshape(group, per)
        wsum, wqsum = wsum.reshape(group, out_ch // group, per), wqsum.reshape(group, out_ch // group, per)
        out = np.einsum("gok,gk->go", wqsum, m + e) - np.einsum("gok,gk->go", wsum, m)
        return out.reshape(-1)
    if w.ndim != 2:
        return None
    if op == "Gemm" and _attr(site.node, "transB", 0):
        w, wq = w.T, wq.T
    if op == "Gemm" and _attr(site.node, "transA", 0):
        return None
    if mu.shape[0] != w.shape[0]:
        return None
    alpha = _attr(site.node, "alpha", 1.0) if op == "Gemm" else 1.0
    return alpha * ((mu + eps) @ wq - mu @ w)


def correct_biases(
    qdq: Any, fp32: Any, data: Dataset, batch: int = 16, same_as: tuple[Any, set[str]] | None = None
) -> tuple[Any, BiasCorrection]:
    """A copy of the int8 Q/DQ graph `qdq` whose biases absorb each int8 op's expected output shift, measured on
    `data` through `fp32` (the float graph `qdq` was quantized from: same node and tensor names). `same_as`:
    (a float graph, the tensors of `fp32` whose values differ from its): the others' sums are that graph's (a
    smoothed graph's Conv inputs upstream of the smoothing are the unsmoothed graph's)."""
    from onnx import numpy_helper

    sites, skipped = _sites(qdq, fp32)
    if not sites:
        return qdq, BiasCorrection((), skipped)
    values = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    # the float run returns every corrected op's input at once: its batch comes from the memory budget, as every
    # stage's does (MemoryBudgetExceeded names this stage when one sample does not fit)
    sources = sorted({s.source for s in sites})
    batch = batch_size(per_sample_bytes(fp32, sources, data), data, "bias correction", batch)
    means = _input_means(fp32, sites, values, data, batch, same_as)
    out = copied(qdq)
    inits = {i.name: i for i in out.graph.initializer}
    # bias tensor -> the change each op reading it asks for (in the tensor's own units): one tensor read by several
    # ops (a decoder's GRU unrolled per step shares its weights and bias) moves once, by the mean of their shifts
    wanted: dict[str, list[np.ndarray]] = {}
    readers: dict[str, list[str]] = {}
    largest = 0.0
    for s in sites:
        mu, eps = means[s.node.name]
        shift = _shift(s, mu, eps)
        if shift is None:
            skipped[s.node.name] = "its weight shape does not match its input channels"
            continue
        kind, where = s.bias
        name = where.input[0] if kind == "int32" else where
        scale = values[where.input[1]].astype(np.float64) if kind == "int32" else 1.0
        bias = values[name].astype(np.float64) * scale
        if list(np.shape(shift)) != list(inits[name].dims):
            skipped[s.node.name] = "its bias does not broadcast per output channel"
            continue
        wanted.setdefault(name, []).append(shift / scale)
        readers.setdefault(name, []).append(s.node.name)
        largest = max(largest, float(np.max(np.abs(shift)) / max(float(np.max(np.abs(bias))), 1e-12)))
    for name, deltas in wanted.items():
        old, delta = values[name].astype(np.float64), np.mean(deltas, axis=0)
        if values[name].dtype == np.int32:
            new = np.clip(np.round(old - delta), *INT32).astype(np.int32)
        else:
            new = (old - delta).astype(np.float32)
        inits[name].CopyFrom(numpy_helper.from_array(new, name))
    corrected = [n for name in wanted for n in readers[name]]
    return out, BiasCorrection(tuple(corrected), skipped, largest)
