"""Static int8 of a transformer-style graph: weighted ops int8 on their inputs, what int8 breaks kept float."""

from __future__ import annotations

import onnx
import pytest

from deployc.core.ort import session
from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.passes.coverage import onnx_int8_coverage
from deployc.passes.quantize import Int8Config, quantize_int8, quantize_int8_selected
from deployc.passes.transformer_int8 import attention_softmaxes
from tests.passes.test_smoothquant import _proto
from tests.tiny_bert import cosine_drift, token_arrays, token_dataset


@pytest.fixture(scope="module")
def bert() -> onnx.ModelProto:
    return _proto()


@pytest.fixture(scope="module")
def int8(bert):
    return quantize_int8_selected(bert, token_dataset(64), Int8Config())


def _producers(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in proto.graph.node for o in n.output}


def test_only_weighted_ops_read_dequantized_values(int8):
    proto = int8.proto
    producer = _producers(proto)
    inits = {i.name for i in proto.graph.initializer}

    def reads_dq(n: onnx.NodeProto, i: int) -> bool:
        p = producer.get(n.input[i])
        return p is not None and p.op_type == "DequantizeLinear"

    def from_table(t: str) -> bool:  # the embedding lookup's rows, dequantized (Gather → Q → DQ)
        q = producer.get(producer[t].input[0]) if t in producer else None
        return q is not None and q.op_type == "QuantizeLinear" and producer[q.input[0]].op_type == "Gather"

    for n in proto.graph.node:
        if n.op_type in ("Softmax", "LayerNormalization", "Add", "Erf", "Div"):
            dq = [n.input[i] for i in range(len(n.input)) if n.input[i] and reads_dq(n, i)]
            assert all(from_table(t) for t in dq), n.name
        if n.op_type in ("Gemm", "MatMul"):
            weighted = producer.get(n.input[1]) is not None and producer[n.input[1]].input[0] in inits
            assert reads_dq(n, 0) == weighted, n.name  # activation × activation MatMuls stay float
            assert not any(r.op_type == "QuantizeLinear" for r in proto.graph.node if n.output[0] in r.input)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 5  # q/k/v input, o, ff1, ff2 inputs; the embedding table's output
    assert int8.selection.to_json()["kept_float"] == {
        "Add": 4,
        "LayerNormalization": 3,
        "MatMul": 2,
        "Mul": 4,
        "Softmax": 1,
    }


def test_int8_coverage_counts_the_attention_matmuls_as_float(int8):
    coverage = onnx_int8_coverage(int8.proto, token_arrays(1))
    assert coverage.float_ops == {"MatMul": 2} and coverage.int8_ops == 6
    assert 0.8 < coverage.macs < 1.0


def test_tiny_bert_int8_stays_within_a_cosine_of_fp32(bert, int8):
    feeds = token_arrays(64, seed=5)
    ref, got = session(bert).run(None, feeds)[0], session(int8.proto).run(None, feeds)[0]
    assert cosine_drift(ref, got) < 0.005  # measured 8e-5; onnxruntime's all-op default gives far more here


def test_symmetric_int8_keeps_embedding_tables_float(bert):
    proto = quantize_int8(bert, token_dataset(32), Int8Config(symmetric_activations=True))
    producer = _producers(proto)
    gather = next(n for n in proto.graph.node if n.op_type == "Gather")
    assert gather.input[0] in {i.name for i in proto.graph.initializer} and gather.input[0] not in producer


def test_graphs_without_attention_keep_the_quantizer_defaults(digits_onnx):
    assert attention_softmaxes(onnx.load(str(digits_onnx))) == []
    x, _ = digits_arrays("train")
    calib = Dataset({"image": x[:32]}, None, "digits")
    assert quantize_int8_selected(onnx.load(str(digits_onnx)), calib, Int8Config()).selection is None
