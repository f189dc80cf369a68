"""Static int8 op selection for transformer-style ONNX graphs (graphs with scaled dot-product attention).

What onnxruntime's default static int8 does to such a graph, measured on all-MiniLM-L6-v2 (cosine drift of the
sentence embedding, benchmarks/minilm_int8.py): 0.65 with every op type it knows. Quantizing the mask Add alone
on top of the weighted ops gives 0.67, Softmax 0.61: both read the attention scores after the additive mask,
whose -3.4e38 (float32 min) entries make one per-tensor scale of ~1e36, so every real score rounds to the same
value. LayerNormalization 0.17: its input is the residual stream, whose outlier channels (20× the median range)
leave the rest a few int8 steps. With only the MatMul/Gemm nodes 0.065, and of that almost all comes from
quantizing their outputs (onnxruntime's QDQ default for MatMul/Gemm): the FFN-down output carries the residual
stream's outliers into a per-tensor scale. Quantizing only their inputs gives 0.009, and onnxruntime still runs
every such Gemm as an integer kernel (QGemm with a float output), 0.67× the fp32 latency.

So for a graph with attention the default int8 quantizes the weighted ops with constant weights (MatMul, Gemm,
Conv, ConvTranspose), MatMul/Gemm on their inputs only, and the embedding tables (Gather from a constant), and
keeps everything else in float: Softmax, LayerNormalization, the residual and mask Adds, GELU, and the
activation × activation MatMuls of attention (int8 made them no faster and their error only adds up).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from deployc.passes.onnx_util import producers

WEIGHTED = ("MatMul", "Gemm", "Conv", "ConvTranspose")
INPUTS_ONLY = ("MatMul", "Gemm")  # ops whose outputs stay float (onnxruntime: QGemm / MatMulIntegerToFloat)
_BETWEEN_SCORES_AND_SOFTMAX = {"Mul", "Div", "Add", "Sub", "Where", "Cast", "Reshape", "Transpose", "Unsqueeze"}
_BETWEEN_SOFTMAX_AND_CONTEXT = {"Cast", "Dropout", "Reshape", "Transpose", "Identity"}
_MOVES_ONLY = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Pad", "Identity"}


@dataclass(frozen=True)
class Int8Selection:
    """What static int8 quantizes in a transformer-style graph, and what it leaves in float."""

    quantize: tuple[str, ...]  # node names given to the quantizer
    inputs_only: tuple[str, ...]  # op types quantized on their inputs, their outputs left float
    attention: int  # attention blocks found
    float_ops: dict[str, int] = field(default_factory=dict)  # computing ops the quantizer's default takes, kept float

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": "transformer",
            "attention_blocks": self.attention,
            "int8_nodes": len(self.quantize),
            "outputs_float": list(self.inputs_only),
            "kept_float": dict(sorted(self.float_ops.items())),
        }

    def describe(self) -> str:
        floats = ", ".join(f"{op}×{n}" for op, n in sorted(self.float_ops.items())) or "nothing"
        return (
            f"transformer graph ({self.attention} attention blocks): int8 for {len(self.quantize)} ops with constant "
            f"weights or tables ({'/'.join(self.inputs_only)} on their inputs only); kept in float: {floats}"
        )


def _activation_matmul(node: Any, inits: set[str]) -> bool:
    return node.op_type == "MatMul" and not ({node.input[0], node.input[1]} & inits)


def attention_softmaxes(proto: Any) -> list[Any]:
    """Softmax nodes of scaled dot-product attention: they read an activation × activation MatMul (through
    scaling, masking and reshapes) and feed one."""
    nodes = list(proto.graph.node)
    inits = {i.name for i in proto.graph.initializer}
    producer = producers(nodes)
    readers: dict[str, list[Any]] = collections.defaultdict(list)
    for n in nodes:
        for i in n.input:
            readers[i].append(n)

    def from_scores(tensor: str, depth: int = 0) -> bool:
        p = producer.get(tensor)
        if p is None or depth > 8:
            return False
        if _activation_matmul(p, inits):
            return True
        return p.op_type in _BETWEEN_SCORES_AND_SOFTMAX and any(from_scores(i, depth + 1) for i in p.input if i)

    def to_context(tensor: str, depth: int = 0) -> bool:
        for r in readers.get(tensor, []):
            if _activation_matmul(r, inits) and r.input[0] == tensor:
                return True
            if r.op_type in _BETWEEN_SOFTMAX_AND_CONTEXT and depth < 4 and to_context(r.output[0], depth + 1):
                return True
        return False

    return [n for n in nodes if n.op_type == "Softmax" and from_scores(n.input[0]) and to_context(n.output[0])]


def transformer_selection(proto: Any, default_op_types: set[str], int8_tables: bool = True) -> Int8Selection | None:
    """The int8 selection for a graph with attention (None for any other graph: the quantizer's defaults stand).

    `default_op_types`: the op types the quantizer takes by default; those left in float are counted by type,
    pure data movement (Reshape, Transpose...) aside, as it follows its neighbours. `int8_tables`: embedding
    lookups (Gather from a constant table) in int8 too: the table is most of a small encoder's bytes (MiniLM int8:
    23 MB instead of 55) for +0.0003 drift with uint8 activations; symmetric int8 (TensorRT) loses +0.001 there,
    which takes MiniLM past 2%, so it keeps them float."""
    blocks = attention_softmaxes(proto)
    if not blocks:
        return None
    inits = {i.name for i in proto.graph.initializer}
    picked = [
        n.name
        for n in proto.graph.node
        if n.op_type in WEIGHTED and len(n.input) > 1 and n.input[1] in inits and n.input[0] not in inits and n.name
    ]
    if int8_tables:
        picked += [n.name for n in proto.graph.node if n.op_type == "Gather" and n.input[0] in inits and n.name]
    chosen = set(picked)
    kept = collections.Counter(
        n.op_type
        for n in proto.graph.node
        if n.op_type in default_op_types and n.op_type not in _MOVES_ONLY and n.name not in chosen
    )
    return Int8Selection(tuple(picked), INPUTS_ONLY, len(blocks), dict(kept))
