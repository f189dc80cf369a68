"""The int8 Q/DQ placement OpenVINO fuses (targets.onnx.int8_placement: openvino), applied to onnxruntime's QDQ graph.

onnxruntime and OpenVINO want different Q/DQ (measured on YOLOv8n and ResNet-18, 1 thread, AVX-512 VNNI;
benchmarks/openvino_placement.py):
- onnxruntime fuses DQ→op→Q into integer kernels, so every op output carries a Q/DQ (QLinearConv, then
  QLinearSigmoid and QLinearMul for SiLU). OpenVINO cannot fuse a Conv with the activation after it once the Conv's
  output is quantized: YOLOv8n compiled to 1415 layers with 58 FakeQuantize left and ran at 0.65× fp32 where
  NNCF's model runs at 0.42×.
- OpenVINO (like NNCF) wants Q/DQ only where an int8 kernel reads: on the inputs of Conv/Gemm/MatMul. The
  activation, the residual Add and the box arithmetic run in float fused into the Conv; Split, Concat, MaxPool and
  Resize pass the int8 tensor through, which needs one scale for every input and output of a Concat (else a
  FakeQuantize re-scales each input and the next Conv runs in f32). With both, YOLOv8n compiles to 568 layers, 2
  FakeQuantize, every Conv u8, as fast as NNCF's model; onnxruntime runs that graph with float Convs (3× slower).

- What NNCF's models also keep int8 (measured on ResNet-18 against NNCF's default preset, OpenVINO's runtime
  model layer by layer): both inputs of a residual Add (with one left float, the Conv the Add fuses into writes
  f32 and a Reorder converts it: ResNet-18's three downsampling blocks); the input of a global mean pool, which
  OpenVINO's Reduce reads in u8. ResNet-18 then compiles to 62 layers against NNCF's 59: the pool's output stays
  f32 until the Gemm's pair after the Flatten (NNCF moves it onto the pool; here it stays where onnxruntime put
  it, so that every int8 Conv/Gemm reads a DequantizeLinear, which is what deployc's int8 coverage counts).
- No Pad reads a DequantizeLinear (OpenVINO 2026.4 miscompiles that after a Slice; _pads_read_float).
- Each Conv's bias is an Add after it (_conv_bias_as_add), as OpenVINO's own IR writes it: compiling an ONNX Conv
  with a bias input, OpenVINO's reader adds a ShapeOf of the Conv's output (to reshape the bias), and with dynamic
  H/W its shape optimizations can reuse that ShapeOf for a Shape elsewhere (YOLOv8n's Detect head takes H and W of
  each Concat of its box and class branches). The Conv then has two readers and its bias stays a separate f32 step
  plus a Reorder (YOLOv8n's three box-branch Convs, even in fp32); with the Add, the bias fuses into every Conv.

shared_ranges() gives the Concat groups one calibration range (before quantize_static); openvino_placement()
drops the Q/DQ pairs OpenVINO has no int8 kernel for (after it). A dropped pair removes a rounding step; where
onnxruntime folded a Relu or Clip into it, a Clip to its range keeps the activation, unless the tensor is never
negative (passes/nonnegative.py).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deployc.passes.nonnegative import nonnegative_tensors
from deployc.passes.onnx_util import all_graphs, copied, names_read, producers

WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})  # ops OpenVINO runs in int8 from Q/DQ inputs
PASS_INT8 = frozenset({"Split", "Concat", "MaxPool", "Resize"})  # ops OpenVINO runs on the int8 tensor as it is
POOLS = frozenset({"GlobalAveragePool", "AveragePool", "ReduceMean"})  # read in u8 by OpenVINO's Reduce/Pooling
SHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})
QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
SAME_RANGE = PASS_INT8 | SHAPE_OPS | {"Slice"}  # output range = input's


def range_groups(graph: Any, float_concats: set[str]) -> list[list[str]]:
    """Tensors that must share one range: the inputs and output of each quantized Concat, joined through the ops
    whose output keeps its input's range (a Split before a Concat, the MaxPools of an SPPF block)."""
    parent: dict[str, str] = {}

    def root(t: str) -> str:
        parent.setdefault(t, t)
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for n in graph.node:
        if n.op_type == "Concat" and n.name not in float_concats:
            for t in n.input:
                parent[root(t)] = root(n.output[0])
        elif n.op_type in SAME_RANGE - {"Concat"} and n.input:
            for t in n.output:
                parent[root(n.input[0])] = root(t)
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for t in list(parent):
        groups[root(t)].append(t)
    return [g for g in groups.values() if len(g) > 1]


def shared_ranges(graph: Any, cache: str | Path, float_concats: set[str]) -> int:
    """Rewrite quantize_static's calibration cache so every range group (range_groups) has the union of its
    tensors' ranges; returns how many tensors changed range."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, load_tensors_data, save_tensors_data

    loaded = load_tensors_data(cache)
    ranges = dict(loaded.data)
    changed = 0
    for group in range_groups(graph, float_concats):
        known = [t for t in group if t in ranges]
        lows = [float(np.min(ranges[t].range_value[0])) for t in known]
        highs = [float(np.max(ranges[t].range_value[1])) for t in known]
        if len(known) < 2 or (min(lows) == max(lows) and min(highs) == max(highs)):
            continue
        shared = TensorData(lowest=np.array(min(lows), np.float32), highest=np.array(max(highs), np.float32))
        changed += len(known)
        ranges.update(dict.fromkeys(known, shared))
    save_tensors_data(TensorsData(loaded.calibration_method, ranges), cache)
    return changed


def _pairs(graph: Any) -> list[tuple[Any, list[Any]]]:
    """(Q, its DQ readers) for each activation QuantizeLinear read only by DequantizeLinear nodes."""
    weights, readers = {i.name for i in graph.initializer}, _readers(graph)
    found = []
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in weights:
            continue
        dqs = readers[q.output[0]]
        if dqs and all(d.op_type == "DequantizeLinear" for d in dqs):
            found.append((q, dqs))
    return found


def _floor_clamp(graph: Any, q: Any, nonnegative: set[str]) -> tuple[float, float] | None:
    """The range [lo, hi] a Q/DQ pair clamps to when its zero point sits at the type's minimum (lo = 0 for uint8):
    onnxruntime's quantizer folds a Relu or Clip(0, 6) into such a pair (the Relu is gone from the graph), so
    dropping the pair must keep the clamp. None for a pair whose range holds negatives (no activation folded) or
    whose input is never negative (passes/nonnegative.py: a Sigmoid's, an anchor grid's)."""
    from onnx import TensorProto, numpy_helper

    if q.input[0] in nonnegative:
        return None
    inits = {i.name: i for i in graph.initializer}
    if len(q.input) < 3 or q.input[1] not in inits or q.input[2] not in inits:
        return None
    scale = numpy_helper.to_array(inits[q.input[1]])
    point = inits[q.input[2]]
    if scale.size != 1 or point.data_type not in (TensorProto.UINT8, TensorProto.INT8):
        return None
    low, high = (0, 255) if point.data_type == TensorProto.UINT8 else (-128, 127)
    zero = int(numpy_helper.to_array(point).reshape(-1)[0])
    if zero != low:
        return None
    return 0.0, float(scale.reshape(-1)[0]) * (high - zero)


def _drop(graph: Any, pairs: list[tuple[Any, list[Any]]], clamp_folded: bool = True) -> None:
    """Remove Q/DQ pairs: the DQs' readers read the Q's float input instead, through a Clip where the pair held a
    folded Relu/Clip (_floor_clamp). The Clip takes the first DQ's place and output name (graph outputs keep theirs);
    a graph output read straight from the float tensor takes that tensor's name."""
    from onnx import helper, numpy_helper

    outputs = {o.name for o in graph.output}
    nonnegative = nonnegative_tensors(graph) if clamp_folded else set()
    gone, rewire, clips = set(), {}, {}
    for q, dqs in pairs:
        gone.add(id(q))
        clamp = _floor_clamp(graph, q, nonnegative) if clamp_folded else None
        for d in dqs:
            gone.add(id(d))
            rewire[d.output[0]] = dqs[0].output[0] if clamp else q.input[0]
        if clamp:
            lo, hi = (f"{dqs[0].output[0]}_clip_{side}" for side in ("min", "max"))
            graph.initializer.extend(
                [numpy_helper.from_array(np.float32(clamp[0]), lo), numpy_helper.from_array(np.float32(clamp[1]), hi)]
            )
            clips[id(dqs[0])] = helper.make_node(
                "Clip", [q.input[0], lo, hi], [dqs[0].output[0]], name=f"{dqs[0].name}_clip"
            )
            rewire.pop(dqs[0].output[0])
    renamed = {rewire[t]: t for _, dqs in pairs for t in (d.output[0] for d in dqs) if t in outputs and t in rewire}
    for n in graph.node:
        for k, t in enumerate(n.input):
            n.input[k] = renamed.get(rewire.get(t, t), rewire.get(t, t))
        for k, t in enumerate(n.output):
            n.output[k] = renamed.get(t, t)
    kept = [clips.get(id(n), n) for n in graph.node if id(n) not in gone or id(n) in clips]
    del graph.node[:]
    graph.node.extend(kept)


def _readers(graph: Any) -> dict[str, list[Any]]:
    readers: dict[str, list[Any]] = collections.defaultdict(list)
    for n in graph.node:
        for t in n.input:
            readers[t].append(n)
    return readers


def int8_reach(graph: Any) -> Callable[[str], bool]:
    """Whether a tensor reaches an int8 kernel's input (Conv/Gemm/MatMul, a mean pool) through ops that carry int8
    (PASS_INT8) and Q/DQ; memoized over the graph as it is now."""
    readers = _readers(graph)
    memo: dict[str, bool] = {}

    def reaches(t: str) -> bool:
        if t not in memo:
            memo[t] = False  # no cycles in an ONNX graph; this only stops re-visits
            memo[t] = any(
                r.op_type in WEIGHTED | POOLS or (r.op_type in PASS_INT8 | QDQ and any(map(reaches, r.output)))
                for r in readers[t]
            )
        return memo[t]

    return reaches


def residual_adds(graph: Any, reaches_int8: Callable[[str], bool]) -> set[int]:
    """ids of the Adds of two dequantized activations whose sum reaches an int8 kernel (a residual connection):
    OpenVINO fuses such an Add into the Conv before it with an int8 second input and an int8 output; with either
    input left float, the Conv writes f32 and a Reorder converts it (ResNet-18's downsampling blocks)."""
    producer = producers(graph.node)

    def activation(t: str) -> bool:
        dq = producer.get(t)
        return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in producer

    return {
        id(n)
        for n in graph.node
        if n.op_type == "Add" and len(n.input) == 2 and all(map(activation, n.input)) and reaches_int8(n.output[0])
    }


def openvino_placement(proto: Any) -> tuple[Any, int]:
    """A copy of a QDQ graph with only the Q/DQ OpenVINO runs in int8 (module docstring); returns (graph, pairs
    dropped). Dropped: the pair after each Split/Concat/MaxPool/Resize whose inputs all come dequantized (OpenVINO
    carries the int8 tensor through it), then every pair whose value reaches no Conv/Gemm/MatMul through such ops."""
    out = copied(proto)
    graph = out.graph
    outputs = {o.name for o in graph.output}
    producer = producers(graph.node)

    def dequantized(n: Any) -> bool:
        data = n.input if n.op_type == "Concat" else n.input[:1]
        return all(getattr(producer.get(t), "op_type", None) == "DequantizeLinear" for t in data)

    def at_output(dqs: list[Any]) -> bool:  # a graph output read through two DQs (or more) keeps its pair
        return len(dqs) > 1 and any(d.output[0] in outputs for d in dqs)

    after_pass = [
        (q, dqs)
        for q, dqs in _pairs(graph)
        if (p := producer.get(q.input[0])) is not None
        and p.op_type in PASS_INT8
        and dequantized(p)
        and not at_output(dqs)
    ]
    _drop(graph, after_pass, clamp_folded=False)  # their inputs' pairs clamp already: a MaxPool adds no negatives

    reaches_int8 = int8_reach(graph)
    adds = residual_adds(graph, reaches_int8)
    readers = _readers(graph)

    def used(dq: Any) -> bool:
        return reaches_int8(dq.output[0]) or any(id(r) in adds for r in readers[dq.output[0]])

    unused = [(q, dqs) for q, dqs in _pairs(graph) if not at_output(dqs) and not any(map(used, dqs))]
    _drop(graph, unused)
    _pads_read_float(graph)
    _conv_bias_as_add(graph)
    return out, len(after_pass) + len(unused)


def _conv_bias_as_add(graph: Any) -> int:
    """Move each Conv's bias (an initializer, or a DequantizeLinear of one: quantize_static's int32 bias) into an Add
    after the Conv of a float initializer shaped [1, C, 1, ...] (module docstring): the dequantized values, exactly
    as DequantizeLinear computes them, so onnxruntime can fold the Add back into a float Conv. The Add takes the
    Conv's output name. A bias computed in the graph stays where it is. Returns the Convs changed."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    producer = producers(graph.node)
    taken = {
        name
        for g in all_graphs(graph)  # subgraphs' names too: names are unique across a model's scopes
        for name in [*(v.name for v in g.input), *(i.name for i in g.initializer)]
        + [t for n in g.node for t in [*n.input, *n.output]]
    }
    nodes, moved, old = [], 0, set()

    def fresh(name: str) -> str:  # a name no tensor of the graph has (an exporter may already use '<conv>_bias')
        base, k = name, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    for conv in graph.node:
        nodes.append(conv)
        if conv.op_type != "Conv" or len(conv.input) < 3 or not conv.input[2]:
            continue
        bias, dq = conv.input[2], producer.get(conv.input[2])
        stored = bias if bias in inits else dq.input[0] if _dequantized_initializer(dq, inits) else None
        weight = inits.get(conv.input[1]) or inits.get(getattr(producer.get(conv.input[1]), "input", [""])[0])
        if stored is None or weight is None:
            continue
        values = numpy_helper.to_array(inits[stored])
        if stored != bias:  # 1-D: a per-channel scale and zero point line up with it whatever the DQ's axis
            scale, zero = (numpy_helper.to_array(inits[t]) if t else 0 for t in [*dq.input[1:], ""][:2])
            values = (values.astype(np.int64) - zero).astype(np.float32) * scale.astype(np.float32)
            old |= set(dq.input[1:])
        shape = [1, -1] + [1] * (len(weight.dims) - 2)  # channels on axis 1 of the Conv's output
        name = fresh(f"{conv.name or conv.output[0]}_bias")
        graph.initializer.append(numpy_helper.from_array(values.astype(np.float32).reshape(shape), name))
        old |= {bias, stored}
        out = conv.output[0]
        conv.output[0] = fresh(f"{out}_without_bias")
        del conv.input[2]
        nodes.append(helper.make_node("Add", [conv.output[0], name], [out], name=f"{conv.name or out}_bias_add"))
        moved += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = names_read(graph) | {o.name for o in graph.output}  # the old biases nothing reads any more go
    nodes = [n for n in nodes if not (set(n.output) & old) or set(n.output) & used]
    del graph.node[:]
    graph.node.extend(nodes)
    used = names_read(graph)
    kept = [i for i in graph.initializer if i.name not in old or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return moved


def _dequantized_initializer(node: Any, inits: dict[str, Any]) -> bool:
    return node is not None and node.op_type == "DequantizeLinear" and all(t in inits for t in node.input if t)


def _pads_read_float(graph: Any) -> list[str]:
    """Move the Q/DQ pair before each Pad to after it: the Pad reads the float tensor and its output is quantized
    with the same scale and zero point (Q/DQ commutes with Pad; a constant 0 stays 0). OpenVINO 2026.4 cannot
    compile a DequantizeLinear with a non-zero zero point into a constant Pad after a Slice ("PadTransformation ...
    Argument shapes are inconsistent": basic-pitch's onnxruntime-placed int8). The pair stays for its other readers;
    a Pad whose readers all quantize its output, or whose output reaches no int8 kernel, gets no second pair.
    Returns the Pads moved."""
    import onnx

    producer = producers(graph.node)
    readers, reaches_int8 = _readers(graph), int8_reach(graph)
    moved, after = [], {}
    for pad in [n for n in graph.node if n.op_type == "Pad" and n.input]:
        dq = producer.get(pad.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        pad.input[0] = q.input[0]
        out = pad.output[0]
        if reaches_int8(out) and any(r.op_type != "QuantizeLinear" for r in readers[out]):
            pad.output[0] = f"{out}_float"
            new_q, new_dq = onnx.NodeProto(), onnx.NodeProto()
            new_q.CopyFrom(q)
            new_dq.CopyFrom(dq)
            new_q.name, new_dq.name = f"{pad.name or out}_QuantizeLinear", f"{pad.name or out}_DequantizeLinear"
            new_q.input[0], new_q.output[0] = pad.output[0], f"{out}_quantized"
            new_dq.input[0], new_dq.output[0] = new_q.output[0], out
            after[id(pad)] = [new_q, new_dq]
        moved.append(pad.name)
    nodes = [m for n in graph.node for m in [n, *after.get(id(n), [])]]  # the moved pair right after its Pad
    for _ in range(2):  # the DQs nothing reads any more, then their Qs
        used = {t for n in nodes for t in n.input} | {o.name for o in graph.output}
        nodes = [n for n in nodes if n.op_type not in QDQ or any(t in used for t in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)
    return moved
