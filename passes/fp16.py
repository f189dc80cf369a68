"""fp16 that stays finite: the nodes whose values fp16 cannot hold stay float32 (onnxruntime's converter takes a
node block list), chosen from the values they compute on sample inputs.

- overflow: a node whose float32 output (or input) exceeds 65504 somewhere on the samples;
- underflow into a singular op: Log / Div's divisor / Reciprocal / Pow's base (negative exponent) reading values
  fp16 rounds to zero, with the nodes upstream that produce those tiny values (e.g. Log(Square(x) + 1e-10));
- then the fp16 graph is run: while an output is non-finite where float32's is finite, the first nodes that turn
  non-finite in fp16 are kept float32 too (at most MAX_ROUNDS times).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployc.core.memory import MemoryBudgetExceeded
from deployc.passes.onnx_numerics import (
    FP16_MAX,
    Feeds,
    TensorStats,
    batched_outputs,
    graph_inputs,
    intermediate_stats,
    pinned,
)
from deployc.passes.onnx_util import copied, names_read, producers, sort_topologically

SINGULAR_INPUTS = {"Log": (0,), "Div": (1,), "Reciprocal": (0,)}  # where a zero makes ±inf
MAX_ROUNDS = 3
MAX_CHAIN = 8  # nodes followed upstream from a singular op


@dataclass
class Fp16Result:
    proto: Any
    kept: dict[str, str] = field(default_factory=dict)  # node name → why it stays float32
    finite: bool | None = None  # outputs finite where float32's are, on the samples (None: not checked)


def _named(proto: Any) -> Any:
    """A copy with a name on every node: the converter's block list names nodes."""
    out = copied(proto)
    taken = {n.name for n in out.graph.node}
    for i, n in enumerate(out.graph.node):
        if not n.name:
            n.name = next(c for c in (f"{n.op_type}_{i}", f"{n.op_type}_{i}_fp16") if c not in taken)
            taken.add(n.name)
    return out


def _upstream(
    node: Any, inputs: tuple[int, ...], producer: dict[str, Any], stats: dict[str, TensorStats], kept: dict[str, str]
) -> None:
    """Keep the nodes up to MAX_CHAIN steps upstream of `node`'s `inputs` that lie on a path from a tensor holding
    values fp16 flushes to zero (a Sqrt or Transpose in between does not hide where the zeros come from)."""
    reason = f"feeds values fp16 rounds to zero into {node.op_type} '{node.name}'"
    seen: dict[str, bool] = {}

    def tiny_above(p: Any, depth: int) -> bool:
        if p.name not in seen:
            s = stats.get(p.output[0])
            above = [tiny_above(producer[i], depth + 1) for i in p.input if i in producer] if depth < MAX_CHAIN else []
            seen[p.name] = (s is not None and s.flushed > 0) or any(above)
            if seen[p.name]:
                kept.setdefault(p.name, reason)
        return seen[p.name]

    for i in inputs:
        if i < len(node.input) and node.input[i] in producer:
            tiny_above(producer[node.input[i]], 1)


def _singular_inputs(node: Any, constants: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Inputs of `node` where a zero gives ±inf (Pow's base only with a negative constant exponent)."""
    if node.op_type == "Pow":
        exponent = constants.get(node.input[1]) if len(node.input) > 1 else None
        return (0,) if exponent is not None and (exponent < 0).any() else ()
    return SINGULAR_INPUTS.get(node.op_type, ())


def predicted_fp32_nodes(proto: Any, stats: dict[str, TensorStats]) -> dict[str, str]:
    """Nodes to keep float32 from their float32 values alone (overflow, underflow into singular ops)."""
    producer = producers(proto.graph.node)
    kept: dict[str, str] = {}
    for n in proto.graph.node:
        s = stats.get(n.output[0]) if n.output else None
        if s is not None and s.absmax > FP16_MAX:
            kept[n.name] = f"output reaches {s.absmax:.3g}, beyond fp16's 65504"
    big = {t: s.absmax for t, s in stats.items() if s.absmax > FP16_MAX}
    for n in proto.graph.node:  # readers of a value beyond fp16 take it as float32 (an fp16 cast would be inf)
        read = next((t for t in n.input if t in big), None)
        if read is not None:
            kept.setdefault(n.name, f"reads '{read}', which reaches {big[read]:.3g}, beyond fp16's 65504")
    from onnx import numpy_helper

    constants = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if np.prod(i.dims) <= 1}
    for n in proto.graph.node:
        singular = _singular_inputs(n, constants)
        tiny = [n.input[i] for i in singular if i < len(n.input) and n.input[i] in stats and stats[n.input[i]].flushed]
        if tiny:
            kept.setdefault(n.name, f"reads values fp16 rounds to zero ('{tiny[0]}')")
            _upstream(n, singular, producer, stats, kept)
    return kept


def _nonfinite_origins(
    proto: Any, half: Any, feeds: Feeds, stats: dict[str, TensorStats], kept: dict[str, str]
) -> dict[str, str]:
    """Nodes whose fp16 output is non-finite (where float32's is finite) although their inputs are finite."""
    names = [o for n in proto.graph.node for o in n.output[:1]]
    half_stats = intermediate_stats(half, feeds, names)
    producer = producers(proto.graph.node)

    def turned(t: str) -> bool:
        return t in half_stats and half_stats[t].nonfinite > 0 and stats.get(t, half_stats[t]).nonfinite == 0

    merged = dict(kept)
    for n in proto.graph.node:
        if n.name in merged or not n.output or not turned(n.output[0]) or any(turned(i) for i in n.input):
            continue
        merged[n.name] = "non-finite in fp16 on the samples, finite in float32"
        _upstream(n, tuple(range(len(n.input))), producer, stats, merged)
    return {k: v for k, v in merged.items() if k not in kept}


def without_fp16_round_trips(half: Any, kept: set[str], float_inputs: set[str]) -> Any:
    """Bypass the converter's Cast(fp16)→Cast(fp32) pairs after float32 tensors (outputs of kept nodes, graph
    inputs): between two float32 nodes they would round the value through fp16, losing what the block list keeps."""
    from onnx import TensorProto

    producer = producers(half.graph.node)
    fp32_sources = {o for n in half.graph.node if n.name in kept for o in n.output} | float_inputs

    def cast_to(n: Any) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    for n in half.graph.node:
        src = producer.get(n.input[0]) if cast_to(n) == TensorProto.FLOAT else None
        if src is not None and cast_to(src) == TensorProto.FLOAT16 and src.input[0] in fp32_sources:
            n.input[0] = src.input[0]  # a float32 → float32 Cast: a copy, and the fp16 Cast may now be dead
    outputs = {o.name for o in half.graph.output}
    # the copies themselves: the graph's nodes read the float32 tensor (a chain of kept nodes, e.g. an unrolled
    # recurrent layer's gate math, otherwise carries one Cast per edge); a copy a graph output or a body reads stays
    copies = {
        n.output[0]: n.input[0]
        for n in half.graph.node
        if cast_to(n) == TensorProto.FLOAT and n.input[0] in fp32_sources
    }
    for n in half.graph.node:
        n.input[:] = [copies.get(i, i) for i in n.input]
    used = names_read(half.graph) | outputs
    live = [n for n in half.graph.node if n.op_type != "Cast" or n.output[0] in used]
    del half.graph.node[:]
    half.graph.node.extend(live)
    return half


def convert_fp16(proto: Any, keep_fp32: list[str] | None = None) -> Any:
    """fp16 weights and compute, float32 inputs/outputs; the nodes named in `keep_fp32` stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(proto, keep_io_types=True, node_block_list=list(keep_fp32 or []))
    return topologically_sorted(half)


def topologically_sorted(proto: Any) -> Any:
    """`proto` with producers first (the converter appends its Casts at the end; the checker, onnxruntime and
    TensorRT's parser want them before their readers)."""
    sort_topologically(proto.graph)
    return proto


def finite_fp16(proto: Any, feeds: Feeds | None, keep: dict[str, str] | None = None) -> Fp16Result:
    """fp16 graph of `proto` with the nodes fp16 cannot hold kept float32 (decided on `feeds` when given; Samples
    run in batches the memory budget sizes for every intermediate tensor of a run, the same batches for each graph);
    `keep`: nodes the caller keeps float32 whatever their values (name → why)."""
    keep = {k: why for k, why in (keep or {}).items() if k in {n.name for n in proto.graph.node}}
    if not feeds:
        return Fp16Result(convert_fp16(proto, sorted(keep)), dict(keep))
    proto = _named(proto)
    names = [v.name for v in graph_inputs(proto)] + [o for n in proto.graph.node for o in n.output[:1]]
    try:
        feeds = pinned(feeds, proto, names, "quantize.fp16's range check (every intermediate tensor kept)", scratch=2)
        stats = intermediate_stats(proto, feeds, names)
        reference = list(batched_outputs(proto, feeds))
    except MemoryBudgetExceeded:
        raise
    except Exception:  # samples the graph does not take (e.g. an input batched on axis 1): convert unguided
        return Fp16Result(convert_fp16(proto, sorted(keep)), dict(keep))
    kept = predicted_fp32_nodes(proto, stats) | keep
    float_inputs = {v.name for v in graph_inputs(proto) if v.type.tensor_type.elem_type == 1}
    for _ in range(MAX_ROUNDS + 1):
        half = topologically_sorted(
            without_fp16_round_trips(convert_fp16(proto, sorted(kept)), set(kept), float_inputs)
        )
        got = batched_outputs(half, feeds, optimize=False)  # every tensor stored in fp16, as on an fp16 device
        if all(
            np.isfinite(g[np.isfinite(r)]).all()
            for ref_batch, got_batch in zip(reference, got)
            for r, g in zip(ref_batch, got_batch)
            if r.dtype.kind == "f"
        ):
            return Fp16Result(half, kept, True)
        new = _nonfinite_origins(proto, half, feeds, stats, kept)
        if not new:
            break
        kept.update(new)
    return Fp16Result(half, kept, False)
