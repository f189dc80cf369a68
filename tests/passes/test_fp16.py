"""quantize.fp16 keeps finite: the nodes whose values fp16 cannot hold (overflow beyond 65504, tiny values
flushed to zero in front of a Log) stay float32, chosen from the values on sample inputs, and the pass says which."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deployc.compiler.contracts import Context
from deployc.compiler.instruments import Instruments
from deployc.compiler.manager import run_pass
from deployc.core.config import load_config
from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.passes.fp16 import convert_fp16, finite_fp16, predicted_fp32_nodes
from deployc.passes.onnx_numerics import intermediate_stats, run_outputs
from deployc.passes.quantize import QuantizeFp16
from tests.conftest import digits_config


def _graph(nodes: list, inits: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits or [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def log_of_square() -> onnx.ModelProto:
    """y = Log(Square(Transpose(x))): on a quiet signal x² is ~1e-14, zero in fp16, and log(0) = -inf."""
    return _graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0], name="transpose"),
            helper.make_node("Mul", ["t", "t"], ["power"], name="square"),
            helper.make_node("Log", ["power"], ["y"], name="log"),
        ]
    )


def quiet() -> np.ndarray:
    return np.random.default_rng(0).uniform(1e-9, 1e-6, (4, 16)).astype(np.float32)


def test_log_of_square_stays_finite_in_fp16():
    proto, x = log_of_square(), {"x": quiet()}
    want = run_outputs(proto, x)[0]
    # every tensor stored in fp16 (onnxruntime without its cast fusions, as on an fp16 device): -inf
    assert not np.isfinite(run_outputs(convert_fp16(proto), x, optimize=False)[0]).all()
    result = finite_fp16(proto, x)
    assert {"log", "square"} <= set(result.kept) and result.finite is True
    assert "rounds to zero" in result.kept["log"]
    for optimize in (False, True):
        got = run_outputs(result.proto, x, optimize=optimize)[0]
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-3)  # the kept chain computes in float32 end to end
    onnx.checker.check_model(result.proto, full_check=True)
    assert any(i.data_type == TensorProto.FLOAT16 for i in result.proto.graph.initializer) or all(
        n.name in result.kept for n in result.proto.graph.node if n.op_type != "Cast"
    )


def test_input_beyond_fp16_is_read_in_float32():
    """Raw sensor counts up to 2e5, transposed, then scaled by 1e-3: fp16 cannot hold the input, the scaled
    values fit. (The Transpose makes onnxruntime store the input in fp16: it has an fp16 Transpose kernel.)"""
    inits = [
        numpy_helper.from_array(np.array(1e-3, np.float32), "k"),
        numpy_helper.from_array(np.full((4, 3), 0.25, np.float32), "w"),
    ]
    proto = _graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0], name="transpose"),
            helper.make_node("Mul", ["t", "k"], ["scaled"], name="scale"),
            helper.make_node("MatMul", ["scaled", "w"], ["y"], name="head"),
        ],
        inits,
    )
    x = {"x": np.random.default_rng(1).uniform(1e5, 2e5, (4, 16)).astype(np.float32)}
    assert not np.isfinite(run_outputs(convert_fp16(proto), x, optimize=False)[0]).all()
    result = finite_fp16(proto, x)
    assert set(result.kept) == {"transpose", "scale"} and "beyond fp16" in result.kept["transpose"]
    assert result.finite is True
    got = run_outputs(result.proto, x, optimize=False)[0]
    np.testing.assert_allclose(got, run_outputs(proto, x)[0], rtol=1e-2)


def test_activation_beyond_fp16_is_predicted_from_float32_values():
    """x·1000 @ ones(16, 8) reaches ~1.3e5: the MatMul that makes it, the Transpose that moves it and the Div that
    reads it (bringing it back under 65504) stay float32; the scaling before them is fp16."""
    inits = [
        numpy_helper.from_array(np.array(1000.0, np.float32), "k"),
        numpy_helper.from_array(np.ones((16, 8), np.float32), "w"),
    ]
    proto = _graph(
        [
            helper.make_node("Mul", ["x", "k"], ["scaled"], name="scale"),
            helper.make_node("MatMul", ["scaled", "w"], ["big"], name="matmul"),
            helper.make_node("Transpose", ["big"], ["big_t"], perm=[1, 0], name="transpose"),
            helper.make_node("Div", ["big_t", "k"], ["y"], name="unscale"),
        ],
        inits,
    )
    x = {"x": np.random.default_rng(1).uniform(5, 10, (4, 16)).astype(np.float32)}
    stats = intermediate_stats(proto, x, ["x", "scaled", "big", "big_t", "y"])
    kept = predicted_fp32_nodes(proto, stats)
    assert set(kept) == {"matmul", "transpose", "unscale"} and "beyond fp16's 65504" in kept["matmul"]


def test_quantize_fp16_pass_reports_the_float32_nodes(tmp_path: Path):
    data = Dataset({"x": quiet()}, None, "quiet")
    ctx = Context(load_config(digits_config()), None, data, data, tmp_path, Instruments(quiet=True))
    state = ModelState(onnx=log_of_square(), inputs=(TensorSpec("x", ("batch", 16)),), facts=frozenset({"onnx"}))
    done = run_pass(QuantizeFp16(QuantizeFp16.Config()), state, ctx)
    metrics = done.history[-1].metrics
    assert {"log", "square"} <= set(metrics["fp32_nodes"]) and metrics["finite_on_samples"] is True
    assert np.isfinite(run_outputs(done.onnx, {"x": quiet()}, optimize=False)[0]).all()


def branchy() -> onnx.ModelProto:
    """Every layer inside an If (as spox exports Silero VAD): y = If(flag, x @ w1, x @ w2)."""
    rng = np.random.default_rng(0)

    def branch(name: str, weight: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", weight], [f"{name}_y"], name=f"{name}_matmul")],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", 4])],
        )

    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch("then", "w1"), else_branch=branch("else", "w2"))],
        "branchy",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_fp16_of_a_graph_whose_layers_sit_in_an_if():
    """The converter appends its input Cast after the If that reads it from inside a branch: deployc's sort counts
    what subgraphs read (onnx_ir's cannot), and the dead-Cast cleanup keeps Casts only a branch reads."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from deployc.compiler.manager import graph_problem

    proto = branchy()
    x = {"x": np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32), "flag": np.array(True)}
    assert "topologically sorted" in graph_problem(convert_float_to_float16(proto, keep_io_types=True))
    result = finite_fp16(proto, x)
    assert graph_problem(result.proto) is None and result.finite is True
    np.testing.assert_allclose(run_outputs(result.proto, x)[0], run_outputs(proto, x)[0], rtol=1e-2, atol=1e-2)


def test_nodes_the_caller_keeps_stay_float32_without_a_cast_on_every_edge():
    """finite_fp16(keep=...): a chain of kept nodes (an unrolled recurrent layer's gate math on TensorRT) stays
    float32 whatever its values, with Casts only where it meets fp16 nodes, not a float32 copy on every edge."""
    w = numpy_helper.from_array(np.random.default_rng(1).normal(0, 0.3, (16, 16)).astype(np.float32), "w")
    chain = [helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul")]
    prev = "m"
    for k in range(6):
        op = ("Sigmoid", "Tanh")[k % 2]
        chain.append(helper.make_node(op, [prev], [f"g{k}"], name=f"gate{k}"))
        prev = f"g{k}"
    chain.append(helper.make_node("Relu", [prev], ["y"], name="relu"))
    proto, x = _graph(chain, [w]), {"x": np.random.default_rng(2).normal(0, 1, (4, 16)).astype(np.float32)}
    why = "kept by the caller"
    result = finite_fp16(proto, x, {f"gate{k}": why for k in range(6)} | {"absent": why})
    assert {k: v for k, v in result.kept.items() if k.startswith("gate")} == {f"gate{k}": why for k in range(6)}
    assert "absent" not in result.kept
    types = {
        v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(result.proto).graph.value_info
    }
    gates = [n for n in result.proto.graph.node if n.name.startswith("gate")]
    assert len(gates) == 6 and all(types[n.output[0]] == TensorProto.FLOAT for n in gates)
    casts = [n for n in result.proto.graph.node if n.op_type == "Cast"]
    assert len(casts) <= 4, [(n.name, n.input, n.output) for n in casts]  # x in, into the chain, out of it, y out
    np.testing.assert_allclose(run_outputs(result.proto, x)[0], run_outputs(proto, x)[0], atol=2e-3)
