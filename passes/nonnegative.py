"""Which tensors of an ONNX graph can never be negative, read off the graph alone (no data).

Why: dropping a Q/DQ pair whose zero point sits at the type's minimum keeps its clamp at 0 as a Clip, in case
onnxruntime's quantizer folded a Relu into it (passes/openvino_qdq.py). On a tensor that is never negative the Clip
does nothing but cost a layer: YOLOv8n's anchor grid (Shape → Range → Add 0.5 → Expand → Concat) and its DFL box
decoding (Softmax → Conv with weights 0..15 → Slice) got 31 of them, each a dynamic-shape Eltwise in OpenVINO.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ALWAYS = frozenset({"Relu", "Sigmoid", "HardSigmoid", "Softmax", "Abs", "Exp", "Sqrt", "Shape", "Size"})
# ops whose output is non-negative when every data input is (the data inputs: all but those in INDEX_INPUTS)
KEEPS = frozenset(
    {
        "Add", "Mul", "Div", "Min", "Concat", "Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Expand",
        "Gather", "Cast", "Flatten", "Split", "Identity", "Tile", "MaxPool", "AveragePool", "GlobalAveragePool",
        "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "Range", "Floor", "Ceil", "Round", "Conv", "MatMul",
    }
)  # fmt: skip
FIRST_ONLY = frozenset(  # ops whose inputs after the first are shapes, axes, indices or sizes, not data
    {"Slice", "Reshape", "Squeeze", "Unsqueeze", "Expand", "Gather", "Split", "Tile", "Resize", "ReduceMean",
     "ReduceMax", "ReduceMin", "ReduceSum"}
)  # fmt: skip
QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _attribute(node: Any, name: str) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def _not_below_zero_point(dq: Any, inits: dict[str, np.ndarray]) -> bool:
    """A constant's quantized values are all at least their zero point (per channel along the node's axis)."""
    values = inits[dq.input[0]].astype(np.int64)
    zero = inits.get(dq.input[2]) if len(dq.input) > 2 else None
    if zero is None or zero.size == 1:
        return bool(np.all(values >= (0 if zero is None else int(zero.reshape(-1)[0]))))
    shape = [1] * values.ndim
    axis = _attribute(dq, "axis")
    shape[(1 if axis is None else axis) % values.ndim] = -1
    return bool(np.all(values >= zero.astype(np.int64).reshape(shape)))


def nonnegative_tensors(graph: Any) -> set[str]:
    """Names of the tensors proven never negative: constants that are not, the outputs of ALWAYS ops, of KEEPS ops
    over non-negative data, Max with one non-negative input, Clip with a non-negative floor, ConstantOfShape of a
    non-negative value, Resize (nearest/linear) of a non-negative input. A quantized tensor counts when it is not
    below its zero point (Q(x) ≥ zp exactly when x ≥ 0, DQ(q) ≥ 0 exactly when q ≥ zp)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    found = {name for name, a in inits.items() if a.size == 0 or np.all(a >= 0)}
    for n in graph.node:  # ONNX node lists are topologically sorted
        data = n.input[:1] if n.op_type in FIRST_ONLY else [t for t in n.input if t]
        if n.op_type in QDQ:
            x = n.input[0]
            ok = _not_below_zero_point(n, inits) if x in inits else x in found
        elif n.op_type in ("Constant", "ConstantOfShape"):
            value = _attribute(n, "value")
            ok = (value is None and n.op_type == "ConstantOfShape") or (
                value is not None and bool(np.all(numpy_helper.to_array(value) >= 0))
            )
        elif n.op_type == "Clip":
            ok = len(n.input) > 1 and n.input[1] in found
        elif n.op_type == "Max":
            ok = any(t in found for t in n.input)
        elif n.op_type == "Resize":  # cubic interpolation overshoots below its inputs
            ok = (_attribute(n, "mode") or b"nearest") in (b"nearest", b"linear") and n.input[0] in found
        else:
            ok = n.op_type in ALWAYS or (n.op_type in KEEPS and all(t in found for t in data))
        if ok:
            found.update(t for t in n.output if t)
    return found
