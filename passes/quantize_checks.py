"""Warnings for known int8 traps, measured on real samples: activations quantized per-tensor whose
channels span wildly different ranges, and int8 artifacts that are not faster than fp32."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.data import Dataset
from passes.sensitivity import _run, layer_name


def _per_tensor_activations(int8: Any) -> list[str]:
    """Float tensors the int8 graph quantizes with one scale (QuantizeLinear with a scalar scale)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in int8.graph.initializer}
    names = []
    for n in int8.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits:
            if numpy_helper.to_array(inits[n.input[1]]).size == 1:
                names.append(n.input[0])
    return list(dict.fromkeys(names))


def channel_ranges(values: np.ndarray) -> np.ndarray:
    """max − min of each channel (axis 1) over every other axis."""
    axes = tuple(i for i in range(values.ndim) if i != 1)
    return values.max(axis=axes) - values.min(axis=axes)


def channel_range_warnings(fp32: Any, int8: Any, data: Dataset, ratio: float = 100.0) -> list[str]:
    """One warning per per-tensor quantized activation whose channel ranges differ by more than `ratio`×."""
    producers = {o: n for n in fp32.graph.node for o in n.output}
    graph_inputs = {i.name for i in fp32.graph.input}
    names = [t for t in _per_tensor_activations(int8) if t in producers or t in graph_inputs]
    if not names:
        return []
    values = _run(fp32, names, data)
    warnings = []
    for t in names:
        v = values[t]
        if v.ndim < 3:  # (batch, features): no channel axis to speak of
            continue
        spans = channel_ranges(v.astype(np.float64))
        live = spans > 0
        if live.sum() < 2:
            continue
        hi, lo = int(np.argmax(np.where(live, spans, -np.inf))), int(np.argmin(np.where(live, spans, np.inf)))
        factor = spans[hi] / spans[lo]
        if factor > ratio:
            node = producers.get(t)
            where = f"output of {layer_name(fp32, node)}" if node is not None else "graph input"
            step = spans[hi] / 255
            warnings.append(
                f"tensor '{t}' ({where}) is quantized per-tensor but its channel ranges differ by {factor:.0f}× "
                f"(channel {hi} spans {spans[hi]:.3g}, channel {lo} spans {spans[lo]:.3g}; one int8 step ≈ {step:.3g}): "
                f"small channels lose their information. Keep the layers around it in fp32 (quantize.exclude) "
                f"or set quantize.tune")
    return warnings


def latency_warning(label: str, int8_ms: float | None, fp32_ms: float | None, runtime: str) -> str | None:
    """A warning when an int8 artifact is not faster than the fp32 one on the same runtime."""
    if int8_ms is None or fp32_ms is None or int8_ms < fp32_ms:
        return None
    return (f"{label} is not faster than fp32 on {runtime} ({int8_ms:.3f} vs {fp32_ms:.3f} ms/sample, batch 1): "
            f"quantize/dequantize overhead outweighs the int8 kernels at this size; ship fp32, or int8 only for its size")


def latency_gate(artifacts: list[Any], mode: str = "warn") -> list[str]:
    """Compare each int8 artifact's batch-1 latency with its target's fp32 artifact ('warn' | 'fail' | 'off').

    Returns the warnings (with timings) for the log. Only in 'fail' mode does the artifact change (gate and
    details["warnings"]): whether int8 wins by a few microseconds varies run to run, and manifest.json must not.
    """
    if mode == "off":
        return []
    found = []
    fp32 = {a.target: a for a in artifacts if a.precision == "fp32" and a.perf}
    for a in artifacts:
        base = fp32.get(a.target)
        if a.precision not in ("int8", "dynamic") or base is None or not a.perf:
            continue
        text = latency_warning(a.label, a.perf.get("latency_ms_batch1"), base.perf.get("latency_ms_batch1"), a.runtime)
        if text:
            found.append(text)
            stable = f"{a.label} is not faster than {base.label} on {a.runtime} (batch 1; figures in timings.json)"
            if mode == "fail" and a.gate.get("status") == "pass":  # opted in: the gate then depends on timing
                a.details.setdefault("warnings", []).append(stable)
                a.gate = {"status": "fail", "reason": f"latency gate: {stable}"}
    return found
