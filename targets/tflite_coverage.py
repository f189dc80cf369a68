"""Int8 coverage of a .tflite flatbuffer: the share of MACs (weights when a shape is missing) whose weights are
int8, counting hybrid (dynamic-range) kernels as int8 like full-integer ones; the same Int8Coverage as ONNX's."""

from __future__ import annotations

from typing import Any

from deployc.passes.coverage import CoverageTally, Int8Coverage, prod

# op → index of its weight tensor; MACs below are per op
WEIGHTED = {
    "CONV_2D": 1,
    "DEPTHWISE_CONV_2D": 1,
    "CONV_3D": 1,
    "FULLY_CONNECTED": 1,
    "BATCH_MATMUL": 1,
    "TRANSPOSE_CONV": 1,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": 1,
    "BIDIRECTIONAL_SEQUENCE_LSTM": 1,
}
INT8_TYPES = {"INT8", "INT4", "UINT8"}


def _macs(name: str, op: Any, sg: Any) -> int | None:
    """Multiply-accumulates of one weighted op from its tensors' static shapes."""

    def shape(i: int) -> list[int] | None:
        t = op.inputs[i] if i < len(op.inputs) else -1
        return [int(d) for d in sg.tensors[t].shape] if t >= 0 and sg.tensors[t].shape is not None else None

    out = [int(d) for d in sg.tensors[op.outputs[0]].shape] if sg.tensors[op.outputs[0]].shape is not None else None
    if name == "TRANSPOSE_CONV":  # inputs: output shape, weights [O, kh, kw, I], input
        w, x = shape(1), shape(2)
        return None if w is None or x is None else prod(x) * prod(w) // max(w[-1], 1)
    if name.endswith("SEQUENCE_LSTM"):  # inputs 1-8: the gate weight matrices
        x = shape(0)
        mats = [shape(i) for i in range(1, 9)]
        return None if x is None or None in mats else prod(x[:-1]) * sum(prod(m) for m in mats)
    w = shape(1)
    if out is None or w is None or not out:
        return None
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D"):
        return prod(out) * prod(w) // max(out[-1], 1)
    if name == "BATCH_MATMUL":
        a = shape(0)
        opts = op.builtinOptions
        return None if a is None else prod(out) * (a[-2] if getattr(opts, "adjX", False) else a[-1])
    return prod(out) * w[-1]  # FULLY_CONNECTED: weights [O, K]


def tflite_int8_coverage(model: bytes) -> Int8Coverage:
    from ai_edge_litert.tools import flatbuffer_utils as fb

    m = fb.convert_bytearray_to_object(bytearray(model))
    tally = CoverageTally()
    for sg in m.subgraphs:
        for op in sg.operators:
            name = fb.opcode_to_name(m, op.opcodeIndex) or ""
            if name not in WEIGHTED or len(op.inputs) <= WEIGHTED[name]:
                continue
            weight = sg.tensors[op.inputs[WEIGHTED[name]]]
            buffer = m.buffers[weight.buffer] if weight.buffer else None
            constant = buffer is not None and (buffer.data is not None or buffer.size)  # inline or by offset
            elements = prod([int(d) for d in weight.shape]) if constant else 0
            tally.add(name, fb.type_to_name(weight.type) in INT8_TYPES, _macs(name, op, sg), elements)
    return tally.coverage()
