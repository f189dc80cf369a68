"""What the LSTM/GRU rewrite (passes/recurrent_int8.py) learns from calibration samples, in one run of the rewritten
graph (its Scan bodies still on the fixed [-1, 1] range):

- each Scan body's H range (passes/recurrent_scan.py): the largest |H| of the layer (initial state and every step),
  at most 1; a state that stays within ±0.1 gets ten times finer steps than [-1, 1] gives it;
- each hoisted input projection whose int8 input would round most of its nonzero values to zero stays float: the
  projection feeds every step, and an LSTM's cell integrates what rounding took away. resemblyzer's first LSTM reads
  mel energies (band maxima spanning 800×, 79% of the values below half a uint8 step): that projection in int8 took
  the embeddings' cosine to fp32 from 0.998 to 0.79, for 3% of the MACs (per-channel equalization got 0.95).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from deployc.data.dataset import Dataset
from deployc.passes.recurrent_int8 import Unrolled
from deployc.passes.recurrent_scan import h_scale, with_state_ranges

DEAD_ZONE = 0.5  # share of an input's nonzero values rounding to zero above which its projection stays float
KEPT_VALUES = 1 << 16  # values sampled per batch and tensor to estimate that share


def calibrated(unrolled: Unrolled, data: Dataset, batch: int, signed: bool) -> Unrolled:
    """`unrolled` with its Scan bodies' H ranges measured on `data` and its projections checked (`signed`: the
    activations are int8 around 0, as TensorRT's, rather than uint8 with a zero point)."""
    proto = unrolled.proto
    nodes = {n.name: n for n in proto.graph.node}
    scans = {
        n.name: (n.input[0], n.output[-1]) for n in proto.graph.node if n.op_type == "Scan" and h_scale(n) is not None
    }
    inputs_of = {m: nodes[m].input[0] for m in unrolled.projections if m in nodes}
    names = sorted({t for pair in scans.values() for t in pair} | set(inputs_of.values()))
    if not names:
        return unrolled
    lo, hi, sampled = _measured(proto, names, set(inputs_of.values()), data, batch)
    ranges = {}
    for scan, pair in scans.items():
        m = min(1.0, max(max(-lo[t], hi[t]) for t in pair))
        if m >= 1e-6:  # a state that never moves: the fixed range is as good as any
            ranges[scan] = round(m, 4)
    float_projections = {}
    for node, x in inputs_of.items():
        step = max(-lo[x], hi[x]) / 127 if signed else (hi[x] - lo[x]) / 255
        values = np.concatenate(sampled[x]) if sampled[x] else np.zeros(0, np.float32)
        nonzero = np.abs(values[values != 0])
        lost = float((nonzero < step / 2).mean()) if nonzero.size and step > 0 else 0.0
        if lost > DEAD_ZONE:
            float_projections[node] = (
                f"int8 would round {lost:.0%} of its input's nonzero values to zero (calibration range "
                f"[{lo[x]:.3g}, {hi[x]:.3g}]): the recurrent layer's input projection stays float"
            )
    proto = with_state_ranges(proto, ranges) if ranges else proto
    return replace(unrolled, proto=proto, state_ranges=ranges, float_projections=float_projections)


_MEMO: dict[str, tuple[dict[str, float], dict[str, float], dict[str, list[np.ndarray]]]] = {}  # remedy trials
_MEMO_KEPT = 4


def _measured(
    proto: Any, names: list[str], kept: set[str], data: Dataset, batch: int
) -> tuple[dict[str, float], dict[str, float], dict[str, list[np.ndarray]]]:
    """(min, max) of each named tensor over `data`, with min 0 and max 0 included, and up to KEPT_VALUES values of
    each in `kept` a batch; streamed in batches the memory budget allows (passes/activations.py), and memoized
    per graph and samples: every remedy trial rewrites the same graph and calibrates on the same samples."""
    from deployc.passes.activations import guarded, per_sample_bytes, run_key, streamed

    key = run_key(proto, data, sorted(kept))
    if key in _MEMO:
        return _MEMO[key]
    lo, hi = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    sampled: dict[str, list[np.ndarray]] = {t: [] for t in kept}
    rng = np.random.default_rng(0)
    size = guarded(per_sample_bytes(proto, names, data), data, "recurrent calibration", batch)
    for values in streamed(proto, names, data, "recurrent calibration", size):
        for name, value in values.items():
            flat = np.asarray(value, np.float32).ravel()
            lo[name], hi[name] = min(lo[name], float(flat.min(initial=0))), max(hi[name], float(flat.max(initial=0)))
            if name in sampled:
                sampled[name].append(flat if flat.size <= KEPT_VALUES else rng.choice(flat, KEPT_VALUES, replace=False))
    while len(_MEMO) >= _MEMO_KEPT:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[key] = (lo, hi, sampled)
    return _MEMO[key]
