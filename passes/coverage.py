"""Int8 coverage of a quantized artifact: the share of multiply-accumulates (or, when shapes are unknown, of
weights) that run in int8, and which weighted ops stay float. An "int8" artifact that is mostly float says so.

In an ONNX graph a weighted op runs in int8 when it is an integer kernel (ConvInteger, MatMulInteger,
DynamicQuantizeLSTM, ...) or when every data input it multiplies comes out of a DequantizeLinear of an 8-bit
tensor (QDQ: onnxruntime and TensorRT fuse the pattern into an int8 kernel).
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployc.passes.onnx_util import all_graphs, copied, producers

# weighted op → (indices of the inputs it multiplies, index of its constant weight); QLinear* interleave scales
MULTIPLIED: dict[str, tuple[tuple[int, ...], int]] = {
    "Conv": ((0, 1), 1),
    "ConvTranspose": ((0, 1), 1),
    "MatMul": ((0, 1), 1),
    "Gemm": ((0, 1), 1),
    "LSTM": ((0, 1, 2), 1),
    "GRU": ((0, 1, 2), 1),
    "RNN": ((0, 1, 2), 1),
    "Attention": ((0, 1), 1),
}
INTEGER_KERNELS: dict[str, tuple[int, int]] = {  # op → (activation input, weight input)
    "ConvInteger": (0, 1),
    "QLinearConv": (0, 3),
    "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3),
    "MatMulIntegerToFloat": (0, 1),
    "DynamicQuantizeMatMul": (0, 1),
    "QGemm": (0, 3),
    "DynamicQuantizeLSTM": (0, 1),
    "QAttention": (0, 1),
}
MOVES_VALUES = {
    "Pad",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Flatten",
    "Identity",
    "Split",
    "Expand",
}
RECURRENT = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
EIGHT_BIT = {2, 3}  # onnx.TensorProto.UINT8, INT8
LOW = 0.5  # below this share an int8/dynamic artifact gets a warning


@dataclass(frozen=True)
class Int8Coverage:
    macs: float | None  # share of MACs in int8 (None when a weighted op's shapes are unknown)
    weights: float | None  # share of weight elements in int8 (None when no weighted op has constant weights)
    float_ops: dict[str, int] = field(default_factory=dict)  # weighted ops that stay float, by op type
    int8_ops: int = 0

    @property
    def share(self) -> float | None:
        return self.macs if self.macs is not None else self.weights

    def to_json(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 4)

        return {"macs": r(self.macs), "weights": r(self.weights), "float_ops": dict(sorted(self.float_ops.items()))}


def percent(share: float) -> str:
    """'37%', or '0.04%' for a share too small to round to a whole percent."""
    return f"{share:.0%}" if share >= 0.01 or share == 0 else f"{share:.2%}"


class CoverageTally:
    """Adds weighted ops up into an Int8Coverage (shared by the ONNX and TFLite counts)."""

    def __init__(self) -> None:
        self.macs = {True: 0, False: 0}
        self.weights = {True: 0, False: 0}
        self.known = True
        self.floats: collections.Counter[str] = collections.Counter()
        self.int8_ops = 0

    def add(self, op_type: str, is_int8: bool, macs: int | None, weights: int) -> None:
        """One weighted op: its MACs (None when unknown) and its constant weight elements."""
        self.int8_ops += is_int8
        if not is_int8:
            self.floats[op_type] += 1
        self.known = self.known and macs is not None
        self.macs[is_int8] += macs or 0
        self.weights[is_int8] += weights

    def coverage(self) -> Int8Coverage:
        total_macs, total_weights = sum(self.macs.values()), sum(self.weights.values())
        return Int8Coverage(
            self.macs[True] / total_macs if self.known and total_macs else None,
            self.weights[True] / total_weights if total_weights else None,
            dict(self.floats),
            self.int8_ops,
        )


def _shapes(proto: Any, feeds: dict[str, np.ndarray] | None = None) -> dict[str, list[int]]:
    """Static shapes of every tensor at batch 1, from onnx shape inference: a graph input's symbolic axes take the
    size of that input in `feeds` (one sample), other symbolic axes 1 (at 1×1 a detector's convolutions would
    weigh by their weights, not their MACs)."""
    import onnx

    g = copied(proto)
    given = {k: np.shape(v) for k, v in (feeds or {}).items()}
    graphs = all_graphs(g.graph)
    for depth, v in [(0, v) for v in g.graph.input] + [(1, v) for sub in graphs[1:] for v in sub.input]:
        dims = v.type.tensor_type.shape.dim  # Scan/Loop body inputs too ('batch' = 1)
        sizes = given.get(v.name, ()) if depth == 0 else ()
        for i, d in enumerate(dims):
            if not d.dim_value:
                d.dim_value = int(sizes[i]) if len(sizes) == len(dims) else 1
    with contextlib.suppress(Exception):  # inference refuses some graphs; initializer and input shapes stay known
        g = onnx.shape_inference.infer_shapes(g, data_prop=True)
    graphs = all_graphs(g.graph)
    shapes = {i.name: list(i.dims) for sub in graphs for i in sub.initializer}
    for v in [v for sub in graphs for v in (*sub.input, *sub.value_info, *sub.output)]:
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape") and all(d.dim_value > 0 for d in dims):
            shapes.setdefault(v.name, [d.dim_value for d in dims])
    return shapes


def _run_shapes(proto: Any, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Shapes of the named tensors in one run on the first sample: what static inference cannot tell
    (onnxruntime's contrib ops such as DynamicQuantizeLSTM have no ONNX shape function)."""
    import onnx

    from deployc.core.ort import session

    exposed = copied(proto)
    produced = {o for n in exposed.graph.node for o in n.output if o} - {o.name for o in exposed.graph.output}
    wanted = [n for n in dict.fromkeys(names) if n in produced]
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted)
    sample = {k: v[:1] for k, v in feeds.items()}
    outputs = [o.name for o in exposed.graph.output]
    values = session(exposed, threads=1, optimize=False).run(outputs, sample)
    return {n: list(np.shape(v)) for n, v in zip(outputs, values)}


def _macs(node: Any, w: int, shapes: dict[str, list[int]]) -> int | None:
    """Multiply-accumulates of one weighted node at batch 1; None when a shape it needs is unknown."""
    x, weight = shapes.get(node.input[0]), shapes.get(node.input[w]) if w < len(node.input) else None
    y = shapes.get(node.output[0])
    op = node.op_type
    if op in RECURRENT:
        rec = shapes.get(node.input[2]) if len(node.input) > 2 else None
        return None if x is None or weight is None or rec is None else x[0] * x[1] * (prod(weight) + prod(rec))
    if op in ("ConvTranspose",):
        return None if x is None or weight is None else prod(x) * prod(weight[1:])
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        return None if y is None or weight is None else prod(y) * prod(weight[1:])
    if op in ("Attention", "QAttention"):
        return None if x is None or weight is None else prod(x[:-1]) * prod(weight)
    if op in ("Gemm", "QGemm"):
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return None if x is None or y is None else prod(y) * x[0 if trans_a else -1]
    return None if x is None or y is None else prod(y) * x[-1]  # MatMul family: [..., M, K] @ [K, N]


def prod(dims: list[int]) -> int:
    return int(np.prod(dims, dtype=np.int64)) if dims else 1


def _needed(node: Any, w: int) -> list[str]:
    ins = [node.input[i] for i in (0, w, 2 if node.op_type in RECURRENT else w) if i < len(node.input)]
    return ins + list(node.output[:1])


def _repeats(graph: Any, shapes: dict[str, list[int]], inits: dict[str, Any], times: int | None = 1) -> dict:
    """id of `graph` and of each body nested in it → how many times it runs per inference (a Scan body once per
    step of its scanned axis, a Loop body its constant trip count); None when that is not fixed in the graph."""
    from onnx import numpy_helper

    found = {id(graph): times}
    for n in graph.node:
        steps: int | None = 1
        if n.op_type == "Scan":
            scanned = n.input[len(n.input) - _attr_i(n, "num_scan_inputs")]
            axis = (list(next((a.ints for a in n.attribute if a.name == "scan_input_axes"), [])) or [0])[0]
            shape = shapes.get(scanned)
            steps = shape[axis] if shape else None
        elif n.op_type == "Loop":
            trip = inits.get(n.input[0]) if n.input and n.input[0] else None
            steps = int(numpy_helper.to_array(trip)) if trip is not None else None
        for a in n.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                found |= _repeats(sub, shapes, inits, None if times is None or steps is None else times * steps)
    return found


def _attr_i(node: Any, name: str) -> int:
    return next(a.i for a in node.attribute if a.name == name)


def onnx_int8_coverage(proto: Any, feeds: dict[str, np.ndarray] | None = None) -> Int8Coverage:
    """Int8Coverage of an ONNX graph (static QDQ, dynamic int8, or one quantized by QAT); `feeds` (samples)
    fill in the shapes static inference cannot."""
    graphs = all_graphs(proto.graph)  # If/Loop bodies too (spox's Silero VAD keeps every layer in an If)
    nodes = [n for g in graphs for n in g.node]
    graph_of = {id(n): id(g) for g in graphs for n in g.node}
    inits = {i.name: i for g in graphs for i in g.initializer}
    producer = producers(nodes)
    q_type = {}  # tensor → element type of the 8-bit value it holds (QuantizeLinear outputs, int8 initializers)
    for n in nodes:
        if n.op_type == "QuantizeLinear":
            zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            q_type[n.output[0]] = zp.data_type if zp is not None else 2  # no zero point: uint8
    q_type.update({name: i.data_type for name, i in inits.items()})
    for n in nodes:  # 8-bit values moved by ops that keep their type (e.g. cpu.int8's channel Pad before a DQ)
        if n.op_type in MOVES_VALUES and n.input and q_type.get(n.input[0]) in EIGHT_BIT:
            q_type.update({o: q_type[n.input[0]] for o in n.output if o})

    def dequantized(t: str) -> bool:
        p = producer.get(t)
        return p is not None and p.op_type == "DequantizeLinear" and q_type.get(p.input[0]) in EIGHT_BIT

    def constant(t: str) -> str | None:  # the initializer behind a weight input (through its DequantizeLinear)
        p = producer.get(t)
        if p is not None and p.op_type == "DequantizeLinear":
            t = p.input[0]
        return t if t in inits else None

    weighted = []  # (node, is it int8, index of its weight input)
    for n in nodes:
        if n.op_type in INTEGER_KERNELS:
            weighted.append((n, True, INTEGER_KERNELS[n.op_type][1]))
        elif n.op_type in MULTIPLIED:
            data, w = MULTIPLIED[n.op_type]
            weighted.append((n, all(i < len(n.input) and dequantized(n.input[i]) for i in data), w))
    shapes = _shapes(proto, feeds)
    missing = [t for n, _, w in weighted for t in _needed(n, w) if t not in shapes]
    if missing and feeds:
        with contextlib.suppress(Exception):  # shapes stay unknown: the MAC share is then None
            shapes.update(_run_shapes(proto, missing, feeds))
    repeats = _repeats(proto.graph, shapes, inits)
    tally = CoverageTally()
    for n, is_int8, w in weighted:
        consts = [constant(n.input[i]) for i in ((w, 2) if n.op_type in RECURRENT else (w,)) if i < len(n.input)]
        macs, times = _macs(n, w, shapes), repeats[graph_of[id(n)]]  # a Scan body's MatMul runs once per step
        macs = None if macs is None or times is None else macs * times
        tally.add(n.op_type, is_int8, macs, sum(prod(list(inits[c].dims)) for c in consts if c))
    return tally.coverage()


def coverage_details(coverage: Int8Coverage, where: str, log: Any, hint: str = "") -> dict[str, Any]:
    """Artifact details for `coverage` ('int8_coverage'), and, when less than half runs in int8 and the target
    knows why, that reason as a warning (logged through `log`); the driver's own warning gives the share."""
    details: dict[str, Any] = {"int8_coverage": coverage.to_json()}
    if hint and coverage.share is not None and coverage.share < LOW:
        warning = f"{where}: {percent(coverage.share)} in int8 because {hint}"
        log(f"warning: {warning}")
        details["warnings"] = [warning]
    return details
