"""What the TensorRT ONNX parser accepts, and the GPU-free preflight that checks a graph against it.

Source of the table: onnx/onnx-tensorrt, docs/operators.md, the revision headed "TensorRT 10.15
supports operators in the inclusive range of opset 9 to opset 24"
(https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md). Rows below are that table's
"Supported = Y" rows with their "Supported Types" column; every operator not listed is unsupported.
Update by re-reading that file for the TensorRT release you deploy to.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deployc.errors import UsageError

TABLE_SOURCE = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15)"
OPSET_RANGE = (9, 24)
# ONNX tensor types TensorRT accepts at all (same file, "TensorRT supports the following ONNX data types").
SUPPORTED_DTYPES = {"DOUBLE", "FP32", "FP16", "BF16", "FP8", "FP4", "INT32", "INT64", "INT8", "INT4", "UINT8", "BOOL"}
# Explicit quantization in TensorRT is symmetric: Q/DQ zero points must be 0 and of these types.
QUANTIZED_DTYPES = {"INT8", "FP8", "FP4", "INT4"}

_F = "FP32 FP16 BF16"
_FI = "FP32 FP16 BF16 INT32 INT64"
_FIB = "FP32 FP16 BF16 INT32 INT64 BOOL"
_TABLE = f"""
Abs {_FI}|Acos {_F}|Acosh {_F}|Add {_FI}|And BOOL|ArgMax {_FI}|ArgMin {_FI}|Asin {_F}|Asinh {_F}|Atan {_F}|Atanh {_F}
Attention {_F} INT8 FP8|AveragePool {_F}|BatchNormalization {_F}|BlackmanWindow FP32 FP16
Cast {_FIB} UINT8|CastLike {_FIB} UINT8|Ceil {_F}|Celu {_F}|Clip {_F}|Concat {_FIB}
Constant {_FIB} FP8 FP4 INT4|ConstantOfShape {_FIB} FP8 FP4 INT4|Conv {_F}|ConvTranspose {_F}|Cos {_F}|Cosh {_F}
CumSum {_F}|DeformConv FP32 FP16|DepthToSpace {_FI}|DequantizeLinear INT8 FP8 FP4 INT4|Div {_FI}|Dropout {_F}
Einsum {_F}|Elu {_F}|Equal {_FI}|Erf {_F}|Exp {_F}|Expand {_FIB}|EyeLike {_FIB}|Flatten {_FIB}|Floor {_F}
Gather {_FIB}|GatherElements {_FIB}|GatherND {_FIB}|Gelu {_FI} INT8|Gemm {_F}|GlobalAveragePool {_F}
GlobalLpPool {_F}|GlobalMaxPool {_F}|Greater {_FI}|GreaterOrEqual {_FI}|GridSample FP32 FP16
GroupNormalization {_F}|GRU {_F}|HammingWindow FP32 FP16|HannWindow FP32 FP16|HardSigmoid {_F}|HardSwish {_F}
Hardmax {_F}|Identity {_FIB}|If {_FIB}|ImageScaler {_F}|InstanceNormalization {_F}|IsInf {_F}|IsNaN {_FI}
LayerNormalization {_F}|LeakyRelu {_F}|Less {_FI}|LessOrEqual {_FI}|Log {_F}|LogSoftmax {_F}|Loop {_FIB}|LRN {_F}
LSTM {_F}|LpNormalization {_F}|LpPool {_F}|MatMul {_F}|Max {_FI}|MaxPool {_F}|Mean {_FI} FP8
MeanVarianceNormalization {_F}|Min {_FI}|Mish FP32 FP16|Mod {_FI}|Mul {_FI}|Neg {_FI}|NonMaxSuppression FP32 FP16
NonZero FP32 FP16|Not BOOL|OneHot {_FIB}|Or BOOL|Pad {_FI}|ParametricSoftplus {_F}|Pow {_FI}|PRelu {_F}
QuantizeLinear {_F}|RandomNormal {_F}|RandomNormalLike {_F}|RandomUniform {_F}|RandomUniformLike {_F}|Range {_FI}
Reciprocal {_F}|ReduceL1 {_FI}|ReduceL2 {_FI}|ReduceLogSum {_FI}|ReduceLogSumExp {_FI}|ReduceMax {_FI}
ReduceMean {_FI}|ReduceMin {_FI}|ReduceProd {_FI}|ReduceSum {_FI}|ReduceSumSquare {_FI}|Relu {_FI}|Reshape {_FIB}
Resize {_F}|ReverseSequence {_FIB}|RMSNormalization {_F}|RNN {_F}|RoiAlign FP32 FP16|RotaryEmbedding {_F}|Round {_F}
STFT FP32|ScaledTanh {_F}|Scan {_F}|Scatter {_FI}|ScatterElements {_FI}|ScatterND {_FI}|Selu {_F}|Shape {_FIB}
Shrink {_FI}|Sigmoid {_F}|Sign {_FI}|Sin {_F}|Sinh {_F}|Size {_FIB}|Slice {_FIB}|Softmax {_F}|Softplus {_F}
Softsign {_F}|SpaceToDepth {_FI}|Split {_FIB}|Sqrt {_F}|Squeeze {_FIB}|Sub {_FI}|Sum {_FI}|Tan {_F}|Tanh {_F}
TensorScatter FP32 FP16 BF16 INT32|ThresholdedRelu {_F}|Tile {_FIB}|TopK {_FI}|Transpose {_FIB}|Trilu {_FIB}
Unsqueeze {_FIB}|Upsample {_F}|Where {_FIB}|Xor BOOL
"""
SUPPORTED_OPS: dict[str, frozenset[str]] = {
    row.split()[0]: frozenset(row.split()[1:]) for line in _TABLE.strip().splitlines() for row in line.split("|")
}

# onnx.TensorProto element types → the names operators.md uses.
_ONNX_DTYPE = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "STRING",
    9: "BOOL",
    10: "FP16",
    11: "DOUBLE",
    12: "UINT32",
    13: "UINT64",
    14: "COMPLEX64",
    15: "COMPLEX128",
    16: "BF16",
    17: "FP8",
    18: "FP8",
    19: "FP8",
    20: "FP8",
    21: "UINT4",
    22: "INT4",
    23: "FP4",
}


def _tensor_types(proto: Any) -> dict[str, str]:
    """Element type (operators.md name) of every tensor whose type is known after ONNX type inference."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:
        inferred = proto  # inference is a best effort; unknown tensors are simply not type-checked
    g = inferred.graph
    types = {i.name: _ONNX_DTYPE.get(i.data_type, "?") for i in g.initializer}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type:
            types[v.name] = _ONNX_DTYPE.get(v.type.tensor_type.elem_type, "?")
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            types[n.output[0]] = _ONNX_DTYPE.get(n.attribute[0].t.data_type, "?")
    return types


def _constant(proto: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in proto.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def _qdq_problems(proto: Any, node: Any, types: dict[str, str]) -> list[str]:
    """Q/DQ must be symmetric (zero point 0) and of a quantized type TensorRT knows."""
    where = f"node '{node.name}' ({node.op_type})"
    if len(node.input) < 3 or not node.input[2]:
        if node.op_type == "QuantizeLinear":
            return [f"{where}: no zero point, so ONNX quantizes to uint8; TensorRT needs an int8 zero point of 0"]
        qtype = types.get(node.input[0])
    else:
        zp = _constant(proto, node.input[2])
        if zp is None:
            return [f"{where}: zero point '{node.input[2]}' is not a constant"]
        if np.any(zp != 0):
            return [
                f"{where}: zero point {zp.ravel()[:4].tolist()} is not 0 (asymmetric); TensorRT explicit "
                "quantization is symmetric only"
            ]
        qtype = types.get(node.input[2])
    if qtype is not None and qtype not in QUANTIZED_DTYPES:
        return [f"{where}: quantized type {qtype}; TensorRT Q/DQ supports {', '.join(sorted(QUANTIZED_DTYPES))}"]
    return []


def check_profile(proto: Any, profile: dict[str, dict[str, list[int]]]) -> list[str]:
    """Every graph input has a min ≤ opt ≤ max shape whose fixed axes match the graph."""
    problems = []
    inits = {i.name for i in proto.graph.initializer}
    for inp in (i for i in proto.graph.input if i.name not in inits):
        shapes = profile.get(inp.name)
        if shapes is None:
            problems.append(f"input '{inp.name}': no optimization-profile shape")
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        lo, opt, hi = shapes["min"], shapes["opt"], shapes["max"]
        if not len(dims) == len(lo) == len(opt) == len(hi):
            problems.append(f"input '{inp.name}': profile rank {len(lo)} ≠ graph rank {len(dims)}")
            continue
        for axis, (d, a, b, c) in enumerate(zip(dims, lo, opt, hi)):
            if not 1 <= a <= b <= c:
                problems.append(f"input '{inp.name}' axis {axis}: profile needs 1 ≤ min ≤ opt ≤ max, got {a}/{b}/{c}")
            elif d is not None and d > 0 and not d == a == c:
                problems.append(f"input '{inp.name}' axis {axis}: fixed at {d} in the graph, profile gives {a}..{c}")
    return problems


def preflight(proto: Any, profile: dict[str, dict[str, list[int]]], where: str) -> dict[str, Any]:
    """Check a graph against the parser table, Q/DQ symmetry, dtypes, opset and the shape profile.

    Returns a summary for Artifact.details; raises UsageError (exit 2) naming every offending node.
    """
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    problems: list[str] = []
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f"opset {opset}: the TensorRT parser supports opset {OPSET_RANGE[0]}..{OPSET_RANGE[1]}")
    types = _tensor_types(proto)
    for v in list(proto.graph.input) + list(proto.graph.output):
        t = types.get(v.name)
        if t is not None and t not in SUPPORTED_DTYPES:
            problems.append(f"graph tensor '{v.name}': dtype {t} is not a TensorRT type")
    qdq = 0
    for node in proto.graph.node:
        label = f"node '{node.name or '<unnamed>'}' ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{label}: custom domain '{node.domain}' needs a TensorRT plugin")
            continue
        allowed = SUPPORTED_OPS.get(node.op_type)
        if allowed is None:
            problems.append(f"{label}: not supported by the TensorRT ONNX parser ({TABLE_SOURCE})")
            continue
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            qdq += 1
            problems += _qdq_problems(proto, node, types)
            if node.op_type == "DequantizeLinear":
                continue  # its input type is the quantized type _qdq_problems just checked
        first = types.get(node.input[0]) if node.input and node.input[0] else None
        if first == "DOUBLE":
            first = "FP32"  # the parser casts DOUBLE down to FLOAT
        if first is not None and first not in allowed:
            problems.append(f"{label}: input dtype {first}; TensorRT supports {', '.join(sorted(allowed))} here")
    problems += check_profile(proto, profile)
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise UsageError(f"{where}: TensorRT preflight failed:\n  " + "\n  ".join(shown))
    return {
        "table": TABLE_SOURCE,
        "opset": opset,
        "nodes": len(proto.graph.node),
        "qdq_nodes": qdq,
        "zero_points": "all 0" if qdq else "no Q/DQ",
        "profile": profile,
    }
