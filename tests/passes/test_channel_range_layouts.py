"""The channel-range check reads axis 1 as channels only where it is: a recurrent [T, N, C] layout has the batch
there, which changes from batch to batch as samples stream (PaddleOCR's recogniser crashed its int8 artifact)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from deployc.core import memory
from deployc.data.dataset import Dataset
from deployc.passes import quantize_checks
from deployc.passes.activations import per_sample_bytes


def time_major(batch: str | int) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """x[N, C=4, T=6] → Conv1d (axis 1: channels) → Transpose to [T, N, C] → Relu; and the same graph with a
    per-tensor QuantizeLinear on both the conv output and the time-major tensor (what the int8 graph holds)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 1], np.diag([1.0, 10.0, 100.0, 1000.0]).reshape(16).tolist())
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Transpose", ["c"], ["t"], perm=[2, 0, 1], name="to_time_major"),
        helper.make_node("Relu", ["t"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    int8 = onnx.ModelProto()
    int8.CopyFrom(fp32)
    int8.graph.initializer.extend([helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])])
    int8.graph.node.extend(
        [helper.make_node("QuantizeLinear", [t, "s"], [f"{t}_q"], name=f"q_{t}") for t in ("c", "t")]
    )
    return fp32, int8


def test_time_major_tensor_is_not_read_as_channels_at_any_batch_size():
    x = np.random.default_rng(0).uniform(0.5, 1.0, (10, 4, 6)).astype(np.float32)
    data = Dataset({"x": x}, None, "test")
    fp32, int8 = time_major("batch")
    per_sample = per_sample_bytes(fp32, ["c", "t"], data)
    runs = []
    for budget in (memory.Budget(1 << 40, "unbounded"), memory.Budget(per_sample * 4, "four samples")):
        quantize_checks._EXTREMES.clear()
        with memory.applied(budget):
            runs.append(quantize_checks.channel_range_warnings(fp32, int8, data, ratio=100.0))
    assert runs[0] == runs[1]  # 10 samples in batches of about 4: same verdict, no crash
    assert len(runs[0]) == 1 and "tensor 'c'" in runs[0][0]  # the conv output's channels span 1000×
    assert all("tensor 't'" not in w for w in runs[0])  # axis 1 of [T, N, C] is the batch


def test_fixed_batch_graph_skips_a_tensor_whose_axis_1_changes_between_batches():
    # a graph declared with a fixed batch cannot tell from shapes; the streamed check drops the tensor instead
    x = np.random.default_rng(1).uniform(0.5, 1.0, (10, 4, 6)).astype(np.float32)
    data = Dataset({"x": x}, None, "test")
    fp32, int8 = time_major(10)
    fp32.graph.input[0].type.tensor_type.shape.dim[0].Clear()  # unknown batch: runs at any batch size
    int8.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    per_sample = per_sample_bytes(fp32, ["c", "t"], data)
    quantize_checks._EXTREMES.clear()
    with memory.applied(memory.Budget(per_sample * 4, "four samples")):
        warnings = quantize_checks.channel_range_warnings(fp32, int8, data, ratio=100.0)
    assert [w.split("'")[1] for w in warnings] == ["c"]
