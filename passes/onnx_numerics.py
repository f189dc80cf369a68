"""Numeric checks the ONNX passes share: sample feeds for a graph, its outputs on them, whether two graphs
compute the same numbers, and per-tensor statistics of every intermediate value.

The samples a pass checks on (`Samples`, from sample_feeds) run in batches sized to the build's memory budget
(core/memory.py) from the bytes a run holds and returns per sample; what a check keeps of a batch is reduced as the
batches stream (per-tensor statistics; per-output largest error and magnitude), so the verdicts equal one run on
all the samples at once."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployc.core.ort import session
from deployc.core.state import onnx_dtype_name
from deployc.data.dataset import Dataset
from deployc.passes.activations import batch_size, per_sample_bytes
from deployc.passes.onnx_util import copied

FP16_MAX = 65504.0
FP16_TINY = 2.0**-25  # below half the smallest fp16 subnormal a value rounds to zero


def graph_inputs(proto: Any) -> list[Any]:
    """The graph inputs a caller feeds (initializers listed as inputs by old exporters excluded)."""
    inits = {i.name for i in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in inits]


@dataclass(frozen=True)
class Samples:
    """The samples a check runs graphs on, fed in batches the build's memory budget sizes (`size`: pinned, so the
    graphs a check compares see the same batches)."""

    data: Dataset
    size: int | None = None

    def __len__(self) -> int:
        return len(self.data)

    def first(self) -> dict[str, np.ndarray]:
        """The first sample (the model's fixed batch, if it has one), as fed."""
        return next(self.data.batches(1))[0]

    def batch_size(self, proto: Any, kept: list[str], what: str, scratch: int = 0) -> int:
        """Samples per batch of a run of `proto` that returns `kept` (and works on `scratch` copies of the largest)."""
        if self.size is not None:
            return self.size
        return batch_size(per_sample_bytes(proto, kept, self.data, scratch), self.data, what, wanted=len(self.data))

    def batches(self, proto: Any, kept: list[str], what: str, scratch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The graph's feeds, batch by batch (see batch_size)."""
        inputs = [v.name for v in graph_inputs(proto)]
        for x, _ in self.data.batches(self.batch_size(proto, kept, what, scratch)):
            yield {k: x[k] for k in inputs if k in x}


Feeds = dict[str, np.ndarray] | Samples  # a dict is one batch, as the caller sized it


def pinned(feeds: Feeds, proto: Any, kept: list[str] | None, what: str, scratch: int = 0) -> Feeds:
    """`feeds` with the batch size of a run of `proto` returning `kept` (default: its outputs) pinned, for a check
    that compares graphs computing the same values (e.g. before and after a rewrite) batch by batch."""
    if not isinstance(feeds, Samples) or feeds.size is not None:
        return feeds
    kept = [o.name for o in proto.graph.output] if kept is None else kept
    return Samples(feeds.data, feeds.batch_size(proto, kept, what, scratch))


def _batches(proto: Any, feeds: Feeds, kept: list[str], what: str, scratch: int = 0) -> Iterator[dict]:
    if isinstance(feeds, Samples):
        yield from feeds.batches(proto, kept, what, scratch)
    else:
        yield feeds


def sample_feeds(proto: Any, data: Dataset | None, n: int = 4) -> Samples:
    """Up to `n` samples for the graph's inputs: real ones from `data` when it holds every input, else seeded
    random values (symbolic axes 1, integer inputs 0; one batch fed as is), which can miss what only real data shows."""
    inputs = graph_inputs(proto)
    if data is not None and len(data) and all(v.name in data.inputs for v in inputs):
        return Samples(data.take(n))
    rng = np.random.default_rng(0)
    feeds = {}
    for v in inputs:
        dtype = np.dtype(onnx_dtype_name(v.type.tensor_type.elem_type))
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in v.type.tensor_type.shape.dim]
        feeds[v.name] = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype=dtype)
    return Samples(Dataset(feeds, None, "seeded random values", {k: None for k in feeds}))


def run_outputs(proto: Any, feeds: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    """Every graph output on `feeds`, with onnxruntime's CPU EP (the runtime that runs ONNX artifacts);
    optimize=False keeps every tensor in the type the graph gives it (no fused casts)."""
    return [np.asarray(o) for o in session(proto, threads=1, optimize=optimize).run(None, feeds)]


def batched_outputs(proto: Any, feeds: Feeds, optimize: bool = True) -> Iterator[list[np.ndarray]]:
    """run_outputs on each batch of `feeds`, batch by batch (a check holds the reference's outputs, list() of this,
    and streams the other graph's against them)."""
    sess = session(proto, threads=1, optimize=optimize)
    outputs = [o.name for o in proto.graph.output]
    for f in _batches(proto, feeds, outputs, "checking a graph's outputs on samples"):
        yield [np.asarray(o) for o in sess.run(None, f)]


def output_mismatch(ref: list[np.ndarray], got: list[np.ndarray], rtol: float = 1e-3) -> str | None:
    """Why `got` does not compute the same numbers as `ref` (None when it does).

    Same shapes, the same non-finite values where `ref` has them, and finite values within `rtol` of each
    output's largest magnitude (float reassociation in folding/fusions stays far below that)."""
    return batches_mismatch([ref], [got], rtol)


def batches_mismatch(ref: list[list[np.ndarray]], got: Iterable[list[np.ndarray]], rtol: float = 1e-3) -> str | None:
    """output_mismatch over batches (`got` may stream from batched_outputs): each output's largest error and
    magnitude are reduced batch by batch, so the verdict is that of one run on every sample."""
    batches = 0
    broken: dict[int, str] = {}  # output → the first thing found wrong with it
    err: dict[int, float] = {}
    scale: dict[int, float] = {}
    for ref_batch, got_batch in zip(ref, got):
        batches += 1
        if len(ref_batch) != len(got_batch):
            return f"{len(got_batch)} outputs instead of {len(ref_batch)}"
        for i, (a, b) in enumerate(zip(ref_batch, got_batch)):
            if i in broken:
                continue
            why = _broken(i, a, b)
            if why:
                broken[i] = why
                continue
            if a.dtype.kind != "f":
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            finite = np.isfinite(a64)
            if finite.any():
                err[i] = max(err.get(i, 0.0), float(np.max(np.abs(a64[finite] - b64[finite]))))
                scale[i] = max(scale.get(i, 0.0), float(np.max(np.abs(a64[finite]))))
    if batches != len(ref):
        return f"{batches} batches instead of {len(ref)}"
    for i in range(len(ref[0]) if ref else 0):
        if i in broken:
            return broken[i]
        if i in err and err[i] > rtol * max(scale[i], 1e-6):
            return f"output {i} differs by up to {err[i]:.3g} (largest |value| {scale[i]:.3g})"
    return None


def _broken(i: int, a: np.ndarray, b: np.ndarray) -> str | None:
    """What makes output `i` of one batch differ whatever the tolerance: shape, integer values, non-finite values."""
    if a.shape != b.shape:
        return f"output {i} has shape {list(b.shape)} instead of {list(a.shape)}"
    if a.dtype.kind != "f":
        return None if np.array_equal(a, b) else f"output {i} ({a.dtype}) differs"
    finite = np.isfinite(a)
    odd_a, odd_b = a[~finite].astype(np.float64), b[~finite].astype(np.float64)
    if not np.array_equal(odd_a, odd_b, equal_nan=True) or not np.isfinite(b[finite]).all():
        return f"output {i} has non-finite values where the original has finite ones (or the reverse)"
    return None


@dataclass(frozen=True)
class TensorStats:
    """What fp16 would do to one float tensor, over the samples it was measured on."""

    absmax: float  # largest finite |value|
    flushed: int  # non-zero values fp16 rounds to zero
    nonfinite: int  # NaN or ±inf values


def intermediate_stats(proto: Any, feeds: Feeds, names: list[str]) -> dict[str, TensorStats]:
    """TensorStats of the named intermediate tensors on `feeds`; Samples run in batches the budget sizes from the
    named tensors' bytes (every one is returned by a run), each batch reduced to statistics before the next."""
    import onnx

    exposed = copied(proto)
    have = {o.name for o in exposed.graph.output}
    produced = {o for n in exposed.graph.node for o in n.output if o}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n in produced and n not in have)
    sess = session(exposed, threads=1, optimize=False)  # unoptimised: every named tensor survives
    wanted = [o.name for o in sess.get_outputs() if o.name in set(names) and "float" in o.type]
    stats: dict[str, TensorStats] = {}
    what = "the fp16 range check (every intermediate tensor of a run is kept)"
    for batch in _batches(proto, feeds, names, what, scratch=2):  # scratch: |value| and its finite part
        values = dict(zip(wanted, sess.run(wanted, batch)))
        values.update({k: v for k, v in batch.items() if k in set(names) and v.dtype.kind == "f"})
        for name in list(values):
            got, had = _tensor_stats(values.pop(name)), stats.get(name)
            if had is not None:
                got = TensorStats(max(had.absmax, got.absmax), had.flushed + got.flushed, had.nonfinite + got.nonfinite)
            stats[name] = got
    return stats


def _tensor_stats(v: Any) -> TensorStats:
    v = np.asarray(v)
    v = v.astype(np.float32) if v.dtype.itemsize < 4 else v  # fp16's own values: FP16_TINY is 0 in fp16
    finite = np.isfinite(v)
    mag = np.abs(v[finite])
    flushed = int(((mag > 0) & (mag < FP16_TINY)).sum())
    return TensorStats(float(mag.max()) if mag.size else 0.0, flushed, int(v.size - np.count_nonzero(finite)))
