"""Warnings for a known int8 trap, measured on real samples: activations quantized per-tensor whose
channels span wildly different ranges."""

from __future__ import annotations

from typing import Any

import numpy as np

from deployc.data.dataset import Dataset
from deployc.passes.activations import run_key, side_by_side, streamed
from deployc.passes.onnx_util import producers
from deployc.passes.sensitivity import layer_name


def _per_tensor_activations(int8: Any) -> list[str]:
    """Float tensors the int8 graph quantizes with one scale (QuantizeLinear with a scalar scale)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in int8.graph.initializer}
    names = []
    for n in int8.graph.node:
        quantizes_activation = n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits
        if quantizes_activation and numpy_helper.to_array(inits[n.input[1]]).size == 1:
            names.append(n.input[0])
    return list(dict.fromkeys(names))


_EXTREMES: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # graph + samples + tensor -> per-channel (min, max)


def _channel_extremes(fp32: Any, names: list[str], data: Dataset) -> tuple[dict, dict]:
    """Per-channel (axis 1) min and max of each named tensor of rank >= 3 over `data`, streamed a batch at a time;
    memoized per tensor, as every remedy trial checks the same float graph."""
    key = run_key(fp32, data)
    missing = [t for t in names if f"{key}:{t}" not in _EXTREMES]
    low: dict[str, np.ndarray] = {}
    high: dict[str, np.ndarray] = {}
    no_channels: set[str] = set()
    if missing:
        no_channels.update(_batch_on_axis_1(fp32))  # only when extremes are measured: memoized with them
        streams = [t for t in missing if t not in no_channels]

        def measure(item: tuple[str, np.ndarray]) -> None:  # a tensor's own extremes only: side by side
            t, v = item
            if v.ndim < 3 or t in no_channels:  # (batch, features): no channel axis to speak of
                return
            axes = tuple(i for i in range(v.ndim) if i != 1)
            lo, hi = v.min(axis=axes).astype(np.float64), v.max(axis=axes).astype(np.float64)
            if t in low and low[t].shape != lo.shape:  # axis 1 changes with the batch ([T, N, C]): not channels
                no_channels.add(t)
                del low[t], high[t]
                return
            low[t] = np.minimum(low[t], lo) if t in low else lo
            high[t] = np.maximum(high[t], hi) if t in high else hi

        for values in streamed(fp32, streams, data, "the channel-range check") if streams else ():
            side_by_side(measure, values.items())
        for t in missing:
            _EXTREMES[f"{key}:{t}"] = (low.get(t, np.empty(0)), high.get(t, np.empty(0)))
    found = {t: _EXTREMES[f"{key}:{t}"] for t in names}
    return {t: lo for t, (lo, _) in found.items() if lo.size}, {t: hi for t, (_, hi) in found.items() if hi.size}


def _batch_on_axis_1(fp32: Any) -> set[str]:
    """Tensors whose axis 1 is the graph inputs' symbolic batch (a [T, N, C] layout): not channels."""
    import onnx

    batch = {i.type.tensor_type.shape.dim[0].dim_param for i in fp32.graph.input if i.type.tensor_type.shape.dim}
    batch.discard("")
    if not batch:  # a fixed batch size: the shapes cannot tell; the runtime check in _channel_extremes remains
        return set()
    try:
        inferred = onnx.shape_inference.infer_shapes(fp32, strict_mode=False)
    except Exception:  # shape inference refuses some graphs (>2 GB, custom ops): the runtime check remains
        return set()
    infos = [*inferred.graph.value_info, *inferred.graph.input]
    return {
        i.name
        for i in infos
        if len(i.type.tensor_type.shape.dim) >= 3 and i.type.tensor_type.shape.dim[1].dim_param in batch
    }


def channel_range_warnings(fp32: Any, int8: Any, data: Dataset, ratio: float = 100.0) -> list[str]:
    """One warning per per-tensor quantized activation whose channel ranges differ by more than `ratio`×."""
    producer = producers(fp32.graph.node)
    graph_inputs = {i.name for i in fp32.graph.input}
    names = [t for t in _per_tensor_activations(int8) if t in producer or t in graph_inputs]
    if not names:
        return []
    low, high = _channel_extremes(fp32, names, data)
    warnings = []
    for t in names:
        if t not in low:
            continue
        spans = high[t] - low[t]
        live = spans > 0
        if live.sum() < 2:
            continue
        hi, lo = int(np.argmax(np.where(live, spans, -np.inf))), int(np.argmin(np.where(live, spans, np.inf)))
        factor = spans[hi] / spans[lo]
        if factor > ratio:
            node = producer.get(t)
            where = f"output of {layer_name(fp32, node)}" if node is not None else "graph input"
            step = spans[hi] / 255
            warnings.append(
                f"tensor '{t}' ({where}) is quantized per-tensor but its channel ranges differ by {factor:.0f}× "
                f"(channel {hi} spans {spans[hi]:.3g}, channel {lo} spans {spans[lo]:.3g}; one int8 step ≈ {step:.3g}): "
                f"small channels lose their information. Keep the layers around it in fp32 (quantize.exclude) "
                f"(quantize.remedies does so when the gate fails)"
            )
    return warnings
