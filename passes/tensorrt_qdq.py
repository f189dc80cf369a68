"""Where an int8 TensorRT network carries Q/DQ, by TensorRT's explicit-quantization placement recommendations
(TensorRT developer guide, "Explicit Quantization" → "Q/DQ Layer-Placement Recommendations"):

- quantize all inputs of weighted operations (Conv, ConvTranspose, Gemm, MatMul with a constant operand), with
  per-tensor activations and per-channel weights;
- do not quantize their outputs: TensorRT fuses BN, the activation and a residual Add into the weighted op;
- quantize the residual input of a skip connection (the branch TensorRT does not fuse), so that the fused
  Conv + Add can write int8;
- nothing else: Q/DQ propagation moves a Q backward and a DQ forward through the ops that commute with them
  (MaxPool, Concat, Resize, Slice, Reshape, ...), so those run in int8 without Q/DQ of their own, and a
  non-weighted consumer (a head's Concat of box pixels and class scores, its Sigmoid) keeps the precision of
  the rest of the network.

Weighted ops on which int8 does not pay on TensorRT stay in high precision, as Model Optimizer decides them
(modelopt/onnx/quantization/graph_utils.py: find_nodes_from_convs_to_exclude, _exclude_matmuls_by_shape_inference):
convolutions with fewer than 16 input or output channels outside the shapes its int8 kernels take, and GEMMs
whose N or K is below 16. onnxruntime's quantizer inserts the Q/DQ (nodes_to_quantize, inputs only, symmetric,
float biases); the one edit by hand is removing the Q/DQ it puts on a residual Add's fused input, which its
per-node API cannot leave out.
"""

from __future__ import annotations

import collections
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployc.core.ort import CalibrationReader
from deployc.data.dataset import Dataset
from deployc.passes.calibration import METHODS, calibration_cache
from deployc.passes.onnx_util import copied, producers, scratch_dir
from deployc.passes.quantize_memo import memoized_weights

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
FUSED_CONVS = {"Conv", "ConvTranspose"}  # TensorRT fuses a residual Add into these (with their epilogue)
# pointwise ops TensorRT fuses into the weighted op before them (its epilogue)
EPILOGUE = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus"}
EPILOGUE |= {"BatchNormalization", "Identity", "Mish", "Gelu"}
SCALED_BY_CONSTANT = {"Add", "Sub", "Mul", "Div"}  # with one constant operand: a bias or scale TensorRT folds
GATED = {"Sigmoid", "HardSigmoid"}  # Mul(x, Sigmoid(x)) is SiLU, Mul(x, HardSigmoid(x)) HardSwish
MIN_INT8_DIM = 16


@dataclass(frozen=True)
class Placement:
    """The nodes onnxruntime quantizes the inputs of, and what stays in high precision and why."""

    weighted: tuple[str, ...]  # weighted ops whose inputs get Q/DQ
    residual: dict[str, int] = field(default_factory=dict)  # residual Add → index of its fused (unquantized) input
    kept: dict[str, str] = field(default_factory=dict)  # weighted op left in high precision → why

    @property
    def nodes(self) -> list[str]:
        return [*self.weighted, *self.residual]


class _Graph:
    """Producers, consumers and constants of one ONNX graph."""

    def __init__(self, proto: Any):
        g = proto.graph
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.producer = producers(self.nodes)
        # "" marks an omitted optional input (LSTM's sequence_lens): no tensor, so no reader either
        self.consumers: dict[str, list[Any]] = collections.defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.inputs = {v.name for v in g.input if v.name not in self.inits}

    def constant(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant" and p.attribute and p.attribute[0].name == "value":
            return numpy_helper.to_array(p.attribute[0].t)
        return None

    def is_constant(self, name: str) -> bool:
        return name in self.inits or getattr(self.producer.get(name), "op_type", None) == "Constant"

    def depths(self) -> dict[str, int]:
        """Longest path (in nodes) from a graph input to each node: the deeper branch of an Add is its long one."""
        depth: dict[str, int] = {}
        for n in self.nodes:  # topologically sorted (the checker and onnxruntime require it)
            ups = [depth[self.producer[i].name] for i in n.input if i in self.producer]
            depth[n.name] = 1 + max(ups, default=0)
        return depth


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def int8_does_not_pay(node: Any, weight: np.ndarray, g: _Graph) -> str | None:
    """Why TensorRT's int8 kernels do not help this weighted op with this constant weight (None when they do)."""
    if node.op_type == "Conv":
        oc, ic, kernel, group = weight.shape[0], weight.shape[1], weight.shape[2:], _attr(node, "group", 1)
        if oc >= MIN_INT8_DIM and ic >= MIN_INT8_DIM:
            return None
        first = node.input[0] in g.inputs
        dense_ok = group == 1 and (oc % 8 == 0 or ic % 8 == 0) and (first or max(oc, ic) >= MIN_INT8_DIM)
        if dense_ok and len(set(kernel)) <= 1:
            return None
        if group > 1 and oc % 8 == 0 and all(k >= 3 for k in kernel):
            return None
        return f"{oc} output × {ic} input channels: below TensorRT's int8 convolution shapes"
    if node.op_type in ("Gemm", "MatMul") and weight.ndim >= 2:
        trans_b = node.op_type == "Gemm" and _attr(node, "transB", 0)
        k, n = (weight.shape[-1], weight.shape[-2]) if trans_b else (weight.shape[-2], weight.shape[-1])
        if min(k, n) < MIN_INT8_DIM:
            return f"GEMM with K={k}, N={n}: a dimension below {MIN_INT8_DIM}, where int8 tensor cores do not pay"
    return None


def _epilogue_input(g: _Graph, node: Any, chain: set[str]) -> str | None:
    """The tensor an epilogue op (activation, BN, constant bias or scale, x·Sigmoid(x)) applies to, its gate
    added to `chain`; None when `node` is no epilogue op."""
    variable = [i for i in node.input if i and not g.is_constant(i)]
    if len(variable) == 1 and (node.op_type in EPILOGUE or node.op_type in SCALED_BY_CONSTANT):
        return variable[0]
    if node.op_type == "Mul" and len(variable) == 2:
        for x, gate in (variable, variable[::-1]):
            p = g.producer.get(gate)
            if p is not None and p.op_type in GATED and p.input[0] == x:
                chain.add(p.name)
                return x
    return None


def _fused_source(g: _Graph, tensor: str, reader: Any) -> Any | None:
    """The Conv whose epilogue ends in `tensor` (Conv → BN/activation/bias... → tensor, every value in between
    read only inside that chain and `tensor` only by `reader`), i.e. what TensorRT fuses with `reader`; else None."""
    if any(c is not reader for c in g.consumers[tensor]):
        return None
    chain: set[str] = set()
    t: str | None = tensor
    while t is not None and (p := g.producer.get(t)) is not None:
        chain.add(p.name)
        if p.op_type in FUSED_CONVS:
            inner = {o for n in g.nodes if n.name in chain for o in n.output} - {tensor}
            return p if all(c.name in chain for o in inner for c in g.consumers[o]) else None
        t = _epilogue_input(g, p, chain)
    return None


def _residual_adds(g: _Graph, weighted: set[str], skip: set[str]) -> dict[str, int]:
    """Add → index of the input TensorRT fuses into the Conv before it (the other input is the skip branch)."""
    depth = g.depths()
    found = {}
    for n in g.nodes:
        if n.op_type != "Add" or n.name in skip or len(n.input) != 2 or any(g.is_constant(i) for i in n.input):
            continue
        sources = [_fused_source(g, i, n) for i in n.input]
        fusable = [k for k, s in enumerate(sources) if s is not None and s.name in weighted]
        if not fusable:
            continue
        found[n.name] = max(fusable, key=lambda k: depth[sources[k].name])  # the long branch is the fused one
    return found


def place(proto: Any, skip: set[str]) -> Placement:
    """TensorRT's Q/DQ placement for `proto`; the nodes in `skip` (fallback, quantize.exclude) stay unquantized."""
    g = _Graph(proto)
    weighted, kept = [], {}
    for n in (n for n in g.nodes if n.op_type in WEIGHTED):
        weight = next((g.constant(i) for i in n.input[:2] if g.is_constant(i)), None)
        if n.name in skip:
            kept[n.name] = "listed to stay unquantized"
        elif weight is None:
            kept[n.name] = "activation × activation product (no constant weight)"
        elif why := int8_does_not_pay(n, weight, g):
            kept[n.name] = why
        else:
            weighted.append(n.name)
    return Placement(tuple(weighted), _residual_adds(g, set(weighted), skip), kept)


def named(proto: Any) -> Any:
    """A copy with a unique name on every node: onnxruntime's nodes_to_quantize names nodes."""
    out = copied(proto)
    taken = {n.name for n in out.graph.node if n.name}
    for i, n in enumerate(out.graph.node):
        if not n.name:
            k = i
            while f"{n.op_type}_{k}" in taken:
                k += 1
            n.name = f"{n.op_type}_{k}"
            taken.add(n.name)
    return out


def _unfuse_residual_inputs(proto: Any, residual: dict[str, int]) -> int:
    """Point each residual Add's fused input back at the float tensor onnxruntime's Q/DQ pair replaced, and drop
    the pairs nothing reads any more; returns how many inputs were restored."""
    producer = producers(proto.graph.node)
    restored = 0
    for n in proto.graph.node:
        if n.name not in residual:
            continue
        k = residual[n.name]
        dq = producer.get(n.input[k])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            n.input[k] = q.input[0]
            restored += 1
    while True:  # a Q whose DQs were all bypassed goes with them
        read = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
        dead = [
            n
            for n in proto.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in read
        ]
        if not dead:
            return restored
        for n in dead:
            proto.graph.node.remove(n)


@contextmanager
def _root_warnings_off() -> Iterator[None]:
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_placed(
    proto: Any,
    placement: Placement,
    data: Dataset,
    calibration: str,
    per_channel: bool,
    samples: int,
    batch: int,
    percentile: float = 99.999,
    root: Any | None = None,
    changed: frozenset[str] | None = None,
    ahead: bool = False,
) -> tuple[Any, int]:
    """`proto` with symmetric int8 Q/DQ on the inputs of `placement`'s nodes, calibrated on `data`; `root`: the
    float graph `proto` was rewritten from, whose ranges are shared with quantize.int8 (passes/calibration.py);
    `changed`: the tensors whose values that rewrite changed (smoothing's); `ahead`: calibration_cache's."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    op_types = sorted({n.op_type for n in proto.graph.node})
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,  # float biases: TensorRT's DequantizeLinear takes no int32
        "OpTypesToExcludeOutputQuantization": op_types,  # inputs only: outputs are fused or stay high precision
        "DedicatedQDQPair": False,  # one Q/DQ per tensor, shared by its quantized readers
    }
    data = data.take(samples)
    # equal batches: the histogram calibrators stack every batch's values into one array
    batch = max(b for b in range(1, batch + 1) if len(data) % b == 0)
    with scratch_dir() as work:
        src, out = work / "float.onnx", work / "int8.onnx"
        onnx.save(proto, src)
        # entropy/percentile calibrators print progress; the quantizer logs a pre-processing hint on the root logger
        with redirect_stdout(io.StringIO()), _root_warnings_off(), memoized_weights():
            # ranges shared with quantize.int8 and every remedy trial; entropy over 2048 bins (calibration.py)
            changed = changed if root is not None else None
            cache = calibration_cache(root or proto, proto, data, calibration, batch, percentile, work, changed, ahead)
            quantize_static(
                str(src),
                str(out),
                CalibrationReader(data, batch),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, METHODS[calibration]),
                nodes_to_quantize=placement.nodes,
                extra_options=extra,
                calibration_cache_path=cache,
            )
        quantized = onnx.load(str(out))
    return quantized, _unfuse_residual_inputs(quantized, placement.residual)
