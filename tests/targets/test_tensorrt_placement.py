"""TensorRT's Q/DQ placement (passes/tensorrt_qdq.py, passes/tensorrt_int8.py: the tensorrt target's int8) on a
small network built here:

    x ─ stem Conv─BN─Relu ─ a ─ conv1 Conv─BN─Relu ─ conv2 Conv─BN ─ c ─ Add(c, a) ─ Relu ─ MaxPool ─ p
    p ─ branch Conv─Relu ─ q;  Concat(p, q) ─ GlobalAveragePool ─ Flatten ─ fc1 Gemm(32→16) ─ Relu ─ fc2 Gemm(16→10) ─ y

TensorRT's rules put Q/DQ on the inputs of the weighted ops (x, a, b, p, f), on the skip input of the residual Add
(a, already quantized for conv1) and nowhere else: not on c (fused into conv2 with the Add), not before MaxPool,
Concat or the pooling (Q/DQ propagation runs them in int8), not before fc2 (N=10: int8 does not pay).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deployc.compiler.contracts import Context
from deployc.compiler.instruments import Instruments
from deployc.core.config import load_config
from deployc.core.ort import session
from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.errors import UsageError
from deployc.passes.smoothquant import MUL_SUFFIX as SMOOTH_MUL_SUFFIX
from deployc.passes.tensorrt_qdq import place, quantize_placed
from deployc.targets.tensorrt import TensorrtOptions, TensorrtTarget
from deployc.targets.tensorrt_support import preflight
from tests.conftest import digits_config

SHAPE = [3, 16, 16]
PROFILE = {"x": {"min": [1, *SHAPE], "opt": [8, *SHAPE], "max": [8, *SHAPE]}}
WEIGHTED_INT8 = ("stem", "conv1", "conv2", "branch", "fc1")
QUANTIZED = {"x", "a", "b", "p", "f"}  # tensors that carry Q/DQ by TensorRT's rules


def conv_bn_residual_net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(name: str, x: str, y: str, cin: int, cout: int, k: int) -> onnx.NodeProto:
        w = const(f"{name}.w", rng.normal(0, (2 / (cin * k * k)) ** 0.5, (cout, cin, k, k)))
        b = const(f"{name}.b", rng.normal(0, 0.1, cout))
        return helper.make_node("Conv", [x, w, b], [y], name=name, pads=[k // 2] * 4)

    def bn(name: str, x: str, y: str, c: int) -> onnx.NodeProto:
        params = [
            const(f"{name}.scale", rng.uniform(0.5, 1.5, c)),
            const(f"{name}.bias", rng.normal(0, 0.1, c)),
            const(f"{name}.mean", rng.normal(0, 0.1, c)),
            const(f"{name}.var", rng.uniform(0.5, 1.5, c)),
        ]
        return helper.make_node("BatchNormalization", [x, *params], [y], name=name)

    def gemm(name: str, x: str, y: str, k: int, n: int) -> onnx.NodeProto:
        w, b = const(f"{name}.w", rng.normal(0, (1 / k) ** 0.5, (n, k))), const(f"{name}.b", rng.normal(0, 0.1, n))
        return helper.make_node("Gemm", [x, w, b], [y], name=name, transB=1)

    nodes = [
        conv("stem", "x", "stem.c", 3, 16, 3),
        bn("stem.bn", "stem.c", "stem.n", 16),
        helper.make_node("Relu", ["stem.n"], ["a"], name="stem.relu"),
        conv("conv1", "a", "conv1.c", 16, 16, 3),
        bn("conv1.bn", "conv1.c", "conv1.n", 16),
        helper.make_node("Relu", ["conv1.n"], ["b"], name="conv1.relu"),
        conv("conv2", "b", "conv2.c", 16, 16, 3),
        bn("conv2.bn", "conv2.c", "c", 16),
        helper.make_node("Add", ["c", "a"], ["sum"], name="add"),
        helper.make_node("Relu", ["sum"], ["r"], name="add.relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        conv("branch", "p", "branch.c", 16, 16, 1),
        helper.make_node("Relu", ["branch.c"], ["q"], name="branch.relu"),
        helper.make_node("Concat", ["p", "q"], ["cat"], name="concat", axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flatten"),
        gemm("fc1", "f", "fc1.y", 32, 16),
        helper.make_node("Relu", ["fc1.y"], ["h"], name="fc1.relu"),
        gemm("fc2", "h", "y", 16, 10),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_bn_residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *SHAPE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def samples(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, *SHAPE)).astype(np.float32)


def quantized_tensors(proto: onnx.ModelProto) -> set[str]:
    """The float tensors QuantizeLinear reads (through the Casts an fp16 graph puts after a graph input)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    found = set()
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            t = n.input[0]
            while t in producer and producer[t].op_type == "Cast":
                t = producer[t].input[0]
            found.add(t)
    return found


def readers_of_dequantized(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """Activation DequantizeLinear → the nodes reading its output, keyed by the tensor its Q quantized."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    inits = {i.name for i in proto.graph.initializer}
    readers: dict[str, list[str]] = {}
    for n in proto.graph.node:
        for i in n.input:
            dq = producer.get(i)
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] not in inits:
                q = producer[dq.input[0]]
                readers.setdefault(q.input[0], []).append(n.name)
    return readers


def int8_network(
    tmp_path: Path, precision: str, fallback: tuple[str, ...] = (), smoothing: float | None = None
) -> tuple[onnx.ModelProto, dict]:
    """The tensorrt target's int8 network (pass tensorrt.int8), calibrated on 32 samples, and its details."""
    data = Dataset({"x": samples(32, 1)}, None, "normal")
    config = load_config(digits_config(quantize={"samples": 32, "smoothing": smoothing}))
    ctx = Context(config, None, data, data, tmp_path, Instruments(quiet=True))
    state = ModelState(
        onnx=conv_bn_residual_net(),
        inputs=(TensorSpec("x", ("batch", *SHAPE)),),
        facts=frozenset({"onnx", "data.calibration"}),
    )
    target = TensorrtTarget(TensorrtOptions(precision=["int8"], int8_high_precision=precision))
    done, details = target._network("int8", state, ctx, fallback)
    return done.onnx, details


def relative_error(proto: onnx.ModelProto, x: np.ndarray) -> float:
    ref = session(conv_bn_residual_net()).run(None, {"x": x})[0]
    got = session(proto).run(None, {"x": x})[0]
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_placement_follows_tensorrt_rules():
    placement = place(conv_bn_residual_net(), set())
    assert placement.weighted == WEIGHTED_INT8
    assert placement.residual == {"add": 0}  # input 0 (c) is conv2's fused epilogue; input 1 (a) is the skip
    assert set(placement.kept) == {"fc2"} and "N=10" in placement.kept["fc2"]


def test_qdq_sit_on_weighted_inputs_and_the_skip_only(tmp_path: Path):
    proto, _ = int8_network(tmp_path, "fp32")
    onnx.checker.check_model(proto)
    assert quantized_tensors(proto) == QUANTIZED
    readers = readers_of_dequantized(proto)
    assert sorted(readers["a"]) == ["add", "conv1"]  # one shared pair: conv1's input and the Add's skip input
    assert {k: v for k, v in readers.items() if k != "a"} == {
        "x": ["stem"],
        "b": ["conv2"],
        "p": ["branch", "concat"],  # the quantized tensor's other readers take it from the same pair
        "f": ["fc1"],
    }
    add = next(n for n in proto.graph.node if n.name == "add")
    assert add.input[0] == "c"  # the fused branch stays float
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 5 and ops.count("DequantizeLinear") == 5 + len(WEIGHTED_INT8)
    weight_dqs = [
        n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith(".w_quantized")
    ]
    assert len(weight_dqs) == len(WEIGHTED_INT8)  # int8 weights, per-channel, biases stay float
    report = preflight(proto, PROFILE, "test")
    assert report["zero_points"] == "all 0" and report["qdq_nodes"] == 15
    x = samples(16, 2)
    assert relative_error(proto, x) <= 0.03  # of the largest output (measured 1.0%): int8 rounding, five layers


def test_fp16_islands_keep_the_placement_and_say_what_runs_where(tmp_path: Path):
    proto, details = int8_network(tmp_path, "fp16")
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 19  # fp16 scales on QuantizeLinear/DequantizeLinear
    assert quantized_tensors(proto) == QUANTIZED
    preflight(proto, PROFILE, "test")
    scales = [i for i in proto.graph.initializer if i.name.endswith("_scale") and i.data_type == TensorProto.FLOAT16]
    assert len(scales) == 5 + len(WEIGHTED_INT8)
    precision = details["precision"]
    assert precision["int8"] == {"Conv": 4, "Gemm": 1} and precision["rest"] == "fp16"
    assert precision["fp16"] == {
        "Add": 1,
        "BatchNormalization": 3,
        "Concat": 1,
        "Flatten": 1,
        "Gemm": 1,
        "GlobalAveragePool": 1,
        "MaxPool": 1,
        "Relu": 5,
    }
    assert precision["fp32"] == {} and precision["fp32_nodes"] == {}
    placement = details["int8_placement"]
    assert placement["quantize_linear"] == 5 and placement["residual_adds"] == 1
    assert relative_error(proto, samples(16, 2)) <= 0.03


def test_fallback_layers_leave_int8_and_run_in_fp16(tmp_path: Path):
    proto, details = int8_network(tmp_path, "fp16", fallback=("conv2",))
    # conv2's input b loses its Q/DQ; without an int8 conv to fuse with, the Add is no residual Add any more
    assert quantized_tensors(proto) == QUANTIZED - {"b"}
    assert details["int8_placement"]["residual_adds"] == 0
    assert details["int8_placement"]["kept_high_precision"]["conv2"] == "listed to stay unquantized"
    assert details["precision"]["int8"] == {"Conv": 3, "Gemm": 1}
    assert details["precision"]["fp16"]["Conv"] == 1
    onnx.checker.check_model(proto)
    assert relative_error(proto, samples(16, 2)) <= 0.03
    with pytest.raises(UsageError, match=r"targets.tensorrt fallback: no node named \['conv9'\]"):
        int8_network(tmp_path, "fp16", fallback=("conv9",))
    with pytest.raises(UsageError, match=r"no weighted op to run in int8 on TensorRT \('stem': listed to stay"):
        int8_network(tmp_path, "fp16", fallback=WEIGHTED_INT8)  # an int8 artifact with no int8 in it is an error


def test_quantize_placed_alone_restores_the_fused_add_input():
    proto = conv_bn_residual_net()
    placement = place(proto, set())
    data = Dataset({"x": samples(16, 3)}, None, "normal")
    quantized, restored = quantize_placed(proto, placement, data, "minmax", True, 16, 16)
    assert restored == 1 and quantized_tensors(quantized) == QUANTIZED


def test_smoothing_scales_the_gemm_input_before_its_qdq(tmp_path: Path):
    """quantize.smoothing (the remedies' smoothing stage) reaches the tensorrt network: a constant Mul scales fc1's
    input ahead of its Q/DQ, the placement is unchanged, and the numbers stay as close to fp32."""
    proto, _ = int8_network(tmp_path, "fp32", smoothing=0.8)
    onnx.checker.check_model(proto)
    muls = {n.input[0]: n.output[0] for n in proto.graph.node if n.name.endswith(SMOOTH_MUL_SUFFIX)}
    assert set(muls) == {"f", "h"}  # the inputs of both Gemms (fc2 then stays in high precision: N=10)
    assert readers_of_dequantized(proto)[muls["f"]] == ["fc1"]
    assert quantized_tensors(proto) == (QUANTIZED - {"f"}) | {muls["f"]}
    assert relative_error(proto, samples(16, 2)) <= 0.03


def test_omitted_optional_inputs_and_outputs_are_no_edges():
    """ "" names an omitted optional tensor (LSTM's sequence_lens, Y_h); Silero's op15 graph has two LSTMs whose
    "" outputs made the later one the "producer" of the earlier one's "" input (KeyError in the placement)."""
    rng = np.random.default_rng(0)

    def f32(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    hidden, feat, steps = 4, 32, 5
    inits = [f32("conv.w", feat, feat, 1), f32("conv.b", feat)]
    nodes = [helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv")]
    nodes.append(helper.make_node("Transpose", ["c"], ["seq"], name="to_seq", perm=[2, 0, 1]))
    source = "seq"
    for k in (1, 2):  # each LSTM omits sequence_lens and Y_c; the first also omits Y_h
        size = feat if k == 1 else hidden
        inits += [f32(f"W{k}", 1, 4 * hidden, size), f32(f"R{k}", 1, 4 * hidden, hidden), f32(f"B{k}", 1, 8 * hidden)]
        outputs = [f"y{k}", "" if k == 1 else "h2"]
        nodes.append(
            helper.make_node(
                "LSTM", [source, f"W{k}", f"R{k}", f"B{k}", ""], outputs, name=f"lstm{k}", hidden_size=hidden
            )
        )
        nodes.append(helper.make_node("Squeeze", [f"y{k}", "axis1"], [f"s{k}"], name=f"squeeze{k}"))
        source = f"s{k}"
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(
        nodes,
        "lstm_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, feat, steps])],
        [
            helper.make_tensor_value_info("h2", TensorProto.FLOAT, [1, 1, 4]),
            helper.make_tensor_value_info("s2", TensorProto.FLOAT, [5, 1, 4]),
        ],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    placement = place(proto, set())
    assert "conv" in placement.weighted  # the Conv is placed; the LSTMs are not TensorRT int8 ops
    assert not {"lstm1", "lstm2"} & set(placement.weighted)
