"""Helpers the ONNX-level passes share: op counts and a temp-file round trip for path-only APIs."""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def op_counts(proto: Any) -> dict[str, int]:
    return dict(sorted(collections.Counter(n.op_type for n in proto.graph.node).items()))


def producers(nodes: Iterable[Any]) -> dict[str, Any]:
    """Tensor name → the node that writes it. "" marks an omitted optional output (LSTM's Y_h): no tensor, no edge."""
    return {o: n for n in nodes for o in n.output if o}


def weighted_matmul_inputs(proto: Any) -> dict[str, list[Any]]:
    """Activation → the MatMul/Gemm nodes that read it as input 0 with a constant 2-D weight (Gemm without transA):
    what SmoothQuant-style smoothing rescales (passes/smoothquant.py) and calibration measures per channel for it."""
    inits = {i.name: i for i in proto.graph.initializer}
    groups: dict[str, list[Any]] = collections.defaultdict(list)
    for n in proto.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2 or n.input[0] in inits:
            continue
        w = inits.get(n.input[1])
        trans_a = next((a.i for a in n.attribute if a.name == "transA"), 0)
        if w is None or len(w.dims) != 2 or (n.op_type == "Gemm" and trans_a):
            continue
        groups[n.input[0]].append(n)
    return dict(groups)


def copied(proto: Any) -> Any:
    """A deep copy of a ModelProto (for libraries that edit their input in place, and for local edits)."""
    out = type(proto)()
    out.CopyFrom(proto)
    return out


def _subgraphs(node: Any) -> list[Any]:
    return [a.g for a in node.attribute if a.HasField("g")] + [g for a in node.attribute for g in a.graphs]


def all_graphs(graph: Any) -> list[Any]:
    """`graph` and every subgraph (If branches, Loop/Scan bodies) nested in it."""
    return [graph] + [sub for n in graph.node for g in _subgraphs(n) for sub in all_graphs(g)]


def names_read(graph: Any) -> set[str]:
    """Every tensor name `graph`'s nodes read, including what their If/Loop bodies read from outside."""
    reads = {i for n in graph.node for i in n.input if i}
    return reads | {name for n in graph.node for g in _subgraphs(n) for name in _outer_reads(g)}


def _outer_reads(graph: Any) -> set[str]:
    """Names a subgraph reads from enclosing graphs (what it reads minus what it defines)."""
    defined = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    defined |= {o for n in graph.node for o in n.output if o}
    return names_read(graph) - defined


def sort_topologically(graph: Any) -> None:
    """Order `graph`'s nodes (and its subgraphs') so each follows the producers of what it reads, counting the
    values its If/Loop bodies read from outside: onnx_ir's sort cannot, its reader already fails on such graphs.
    Stable: nodes already in order keep it."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [
        [producer[t] for t in [*n.input, *(r for g in _subgraphs(n) for r in _outer_reads(g))] if t in producer]
        for n in nodes
    ]
    order: list[int] = []
    done: set[int] = set()
    for root in range(len(nodes)):
        stack = [(root, iter(deps[root]))]
        on_path = {root}
        while stack and root not in done:
            i, pending = stack[-1]
            nxt = next((j for j in pending if j not in done and j not in on_path), None)  # a cycle is left as is
            if nxt is None:
                stack.pop()
                on_path.discard(i)
                if i not in done:
                    done.add(i)
                    order.append(i)
            else:
                on_path.add(nxt)
                stack.append((nxt, iter(deps[nxt])))
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    for n in graph.node:
        for g in _subgraphs(n):
            sort_topologically(g)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private temp folder for libraries that only read and write files (onnxruntime.quantization)."""
    with tempfile.TemporaryDirectory(prefix="deployc-") as d:
        yield Path(d)


_ELEM = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _quant_params(proto: Any, tensor: str, as_input: bool) -> dict[str, Any] | None:
    """Scale/zero-point of the QuantizeLinear reading a graph input (or DequantizeLinear feeding an output)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    consts = {n.output[0]: n for n in proto.graph.node if n.op_type == "Constant"}

    def value(name: str) -> Any:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    for node in proto.graph.node:
        hit = (
            (node.op_type == "QuantizeLinear" and node.input[0] == tensor)
            if as_input
            else (node.op_type == "DequantizeLinear" and node.output[0] == tensor)
        )
        if hit and len(node.input) >= 3:
            scale, zp = value(node.input[1]), value(node.input[2])
            if scale is not None and zp is not None:
                return {
                    "scale": np.asarray(scale).tolist(),
                    "zero_point": np.asarray(zp).tolist(),
                    "dtype": str(np.asarray(zp).dtype),
                }
    return None


def io_specs(proto: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Manifest entries for graph inputs/outputs; `quantization` is where the graph quantizes them."""
    init_names = {i.name for i in proto.graph.initializer}
    ins = [
        {
            "name": v.name,
            "shape": _dims(v),
            "dtype": _ELEM.get(v.type.tensor_type.elem_type, "other"),
            "quantization": _quant_params(proto, v.name, True),
        }
        for v in proto.graph.input
        if v.name not in init_names
    ]
    outs = [
        {
            "name": v.name,
            "shape": _dims(v),
            "dtype": _ELEM.get(v.type.tensor_type.elem_type, "other"),
            "quantization": _quant_params(proto, v.name, False),
        }
        for v in proto.graph.output
    ]
    return ins, outs


class NodeBuilder:
    """Nodes and initializers of one graph rewrite, named under `base`: MatMul node names in `matmuls`, the rest in
    `elementwise` (the rewrites quantize the first and keep the second float)."""

    def __init__(self, base: str):
        self.base, self.nodes, self.inits, self.matmuls, self.elementwise = base, [], [], [], []
        self._k = 0

    def const(self, value: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = f"{self.base}/{hint}"
        self.inits.append(numpy_helper.from_array(np.array(value, copy=True, order="C"), name))  # 0-d stays 0-d
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, outputs: int = 1, **attrs: Any) -> list[str]:
        from onnx import helper

        self._k += 1
        name = f"{self.base}/{hint}_{self._k}"
        outs = [f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        (self.matmuls if op_type == "MatMul" else self.elementwise).append(name)
        return outs
