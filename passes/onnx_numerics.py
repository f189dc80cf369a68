"""Numeric checks the ONNX passes share: sample feeds for a graph, its outputs on them, whether two graphs
compute the same numbers, and per-tensor statistics of every intermediate value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deployc.core.ort import session
from deployc.core.state import onnx_dtype_name
from deployc.data.dataset import Dataset
from deployc.passes.onnx_util import copied

FP16_MAX = 65504.0
FP16_TINY = 2.0**-25  # below half the smallest fp16 subnormal a value rounds to zero


def graph_inputs(proto: Any) -> list[Any]:
    """The graph inputs a caller feeds (initializers listed as inputs by old exporters excluded)."""
    inits = {i.name for i in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in inits]


def sample_feeds(proto: Any, data: Dataset | None, n: int = 4) -> dict[str, np.ndarray]:
    """Up to `n` samples for the graph's inputs: real ones from `data` when it holds every input, else seeded
    random values (symbolic axes 1, integer inputs 0), which can miss what only real data shows."""
    inputs = graph_inputs(proto)
    if data is not None and len(data) and all(v.name in data.inputs for v in inputs):
        batch, _ = next(data.take(n).batches(n))
        return {v.name: batch[v.name] for v in inputs}
    rng = np.random.default_rng(0)
    feeds = {}
    for v in inputs:
        dtype = np.dtype(onnx_dtype_name(v.type.tensor_type.elem_type))
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in v.type.tensor_type.shape.dim]
        feeds[v.name] = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype=dtype)
    return feeds


def run_outputs(proto: Any, feeds: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    """Every graph output on `feeds`, with onnxruntime's CPU EP (the runtime that runs ONNX artifacts);
    optimize=False keeps every tensor in the type the graph gives it (no fused casts)."""
    return [np.asarray(o) for o in session(proto, threads=1, optimize=optimize).run(None, feeds)]


def output_mismatch(ref: list[np.ndarray], got: list[np.ndarray], rtol: float = 1e-3) -> str | None:
    """Why `got` does not compute the same numbers as `ref` (None when it does).

    Same shapes, the same non-finite values where `ref` has them, and finite values within `rtol` of each
    output's largest magnitude (float reassociation in folding/fusions stays far below that)."""
    if len(ref) != len(got):
        return f"{len(got)} outputs instead of {len(ref)}"
    for i, (a, b) in enumerate(zip(ref, got)):
        if a.shape != b.shape:
            return f"output {i} has shape {list(b.shape)} instead of {list(a.shape)}"
        if a.dtype.kind != "f":
            if not np.array_equal(a, b):
                return f"output {i} ({a.dtype}) differs"
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        finite = np.isfinite(a64)
        if not np.array_equal(a64[~finite], b64[~finite], equal_nan=True) or not np.isfinite(b64[finite]).all():
            return f"output {i} has non-finite values where the original has finite ones (or the reverse)"
        if not finite.any():
            continue
        err = float(np.max(np.abs(a64[finite] - b64[finite])))
        scale = float(np.max(np.abs(a64[finite])))
        if err > rtol * max(scale, 1e-6):
            return f"output {i} differs by up to {err:.3g} (largest |value| {scale:.3g})"
    return None


@dataclass(frozen=True)
class TensorStats:
    """What fp16 would do to one float tensor, over the samples it was measured on."""

    absmax: float  # largest finite |value|
    flushed: int  # non-zero values fp16 rounds to zero
    nonfinite: int  # NaN or ±inf values


def intermediate_stats(proto: Any, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, TensorStats]:
    """TensorStats of the named intermediate tensors on `feeds` (keep the feeds small: every tensor is kept)."""
    import onnx

    exposed = copied(proto)
    have = {o.name for o in exposed.graph.output}
    produced = {o for n in exposed.graph.node for o in n.output if o}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n in produced and n not in have)
    sess = session(exposed, threads=1, optimize=False)  # unoptimised: every named tensor survives
    wanted = [o.name for o in sess.get_outputs() if o.name in set(names) and "float" in o.type]
    values = dict(zip(wanted, sess.run(wanted, feeds)))
    values.update({k: v for k, v in feeds.items() if k in set(names) and v.dtype.kind == "f"})
    stats = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        finite = np.isfinite(v)
        mag = np.abs(v[finite])
        flushed = int(((mag > 0) & (mag < FP16_TINY)).sum())
        stats[name] = TensorStats(float(mag.max()) if mag.size else 0.0, flushed, int((~finite).sum()))
    return stats
