"""Used by benchmarks/yolov8n_accuracy.py only: tried as a fallback remedy trial (branch wtB) and not shipped, because
in the remedy loop it did not bring YOLOv8n inside its budget (+0.080 / +0.083) and would take a trial slot from
every failing build. The two ends of a network, the layers that mixed-precision practice keeps out of int8 first:

- the stem: the first weighted layers from the inputs (and the ops among them). Their quantization error is amplified
  by every layer after them: on YOLOv8n, keeping its first 6 of 64 convolutions (8.5% of the MACs) float lifts the
  class-score cosine to fp32 from 0.982 to 0.995 (benchmarks/yolov8n_accuracy.py), more than the whole head does;
- the tail: the ops after the last weighted layers on the way to the outputs (a detector's box decoding and its
  Concat/Sigmoid over box and class logits, a classifier's Softmax), where one range would be shared by logits of
  very different scales. Ultralytics' and NNCF's published ignored scope for YOLO heads covers the same ops.
"""

from __future__ import annotations

from typing import Any

WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
SHAPE_ONLY = frozenset({"Shape", "Size"})  # read only their input's shape: no value flows through them
NO_VALUES = SHAPE_ONLY | {"Constant", "ConstantOfShape", "Range", "Cast", "Identity"}  # nothing a quantizer changes
STEM_SHARE = 0.1  # of the weighted layers, rounded: the stem of a 64-conv YOLOv8n is its first 6


def weighted_nodes(proto: Any) -> list[int]:
    """Indices of the Conv/Gemm/MatMul nodes whose weight is a constant, in graph (topological) order (indices:
    protobuf hands out a new wrapper object on each access, so node identity does not hold)."""
    nodes = proto.graph.node
    consts = {i.name for i in proto.graph.initializer}
    consts |= {o for n in nodes if n.op_type == "Constant" for o in n.output}
    return [i for i, n in enumerate(nodes) if n.op_type in WEIGHTED and len(n.input) > 1 and n.input[1] in consts]


def stem(proto: Any, share: float = STEM_SHARE) -> list[str]:
    """The nodes up to and including the first round(share × weighted layers) weighted layers (at least one), in
    graph order, but those that compute no values; [] for a graph with fewer than two weighted layers."""
    weighted = weighted_nodes(proto)
    if len(weighted) < 2:
        return []
    last = weighted[max(1, round(share * len(weighted))) - 1]
    return [n.name for n in proto.graph.node[: last + 1] if n.op_type not in NO_VALUES and n.name]


def tail(proto: Any) -> list[str]:
    """The nodes whose values reach a graph output without passing through a weighted layer (weighted layers
    themselves excluded, and a Shape's input is no value it passes on), but those that compute no values; in graph
    order."""
    nodes = list(proto.graph.node)
    weighted = set(weighted_nodes(proto))
    made_by = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    found: set[int] = set()
    todo = [o.name for o in proto.graph.output]
    while todo:
        i = made_by.get(todo.pop())
        if i is None or i in weighted or i in found:
            continue
        found.add(i)
        if nodes[i].op_type not in SHAPE_ONLY:
            todo.extend(t for t in nodes[i].input if t)
    return [n.name for i, n in enumerate(nodes) if i in found and n.op_type not in NO_VALUES and n.name]


def ends(proto: Any) -> list[str]:
    """stem() then tail(), each node once; [] when the graph has fewer than two weighted layers."""
    if len(weighted_nodes(proto)) < 2:
        return []
    return list(dict.fromkeys(stem(proto) + tail(proto)))
