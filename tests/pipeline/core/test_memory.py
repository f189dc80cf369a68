"""The memory budget's arithmetic (pipeline/core/memory.py): sizes, per-sample bytes from shapes, batch sizes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from deployc.core import memory
from deployc.core.config import load_config


def test_sizes_read_as_users_write_them():
    assert memory.parse_size("8GB") == 8 * 10**9
    assert memory.parse_size("512 MiB") == 512 * 2**20
    assert memory.parse_size(1_000_000) == 10**6
    for bad in ("5 parsecs", "-1GB", "GB", True, 0):
        with pytest.raises(ValueError):
            memory.parse_size(bad)
    assert load_config({"model": {"onnx": "m.onnx"}, "build": {"max_memory": "2GiB"}}).build.max_memory == 2**31


def _diamond() -> object:
    """x (N, 100) -> a = Relu(x), b = Neg(x) -> c = Add(a, b) -> y = Relu(c): float32, 400 bytes a tensor a sample."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Neg", ["x"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 100])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 100])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_activations_per_sample_come_from_the_shapes_and_the_order_the_graph_runs_in():
    est = memory.graph_activations(_diamond(), {"x": np.zeros((1, 100), np.float32)})
    assert est.tensors == {"x": 400, "a": 400, "b": 400, "c": 400, "y": 400}
    assert est.peak == 1200  # x, a and b once b is written; x goes after its last reader, a and b after Add
    assert est.exposed(["a", "c"]) == 1200 + 800


def test_batches_fit_the_budget_and_one_sample_that_does_not_fit_says_what_and_how_much():
    with memory.applied(memory.Budget(10_000, "test")):
        assert memory.batch_for(1_000, 64, "a stage") == 10
        assert memory.batch_for(1_000, 4, "a stage") == 4
        assert memory.batch_for(1_000, 64, "a stage", fixed=8) == 8
        with pytest.raises(memory.MemoryBudgetExceeded, match=r"a stage needs 20 kB for one sample, .* 10 kB \(test\)"):
            memory.batch_for(20_000, 64, "a stage")
        with pytest.raises(memory.MemoryBudgetExceeded, match="fixed batch"):
            memory.batch_for(2_000, 64, "a stage", fixed=8)
    big = memory.Budget(100 * memory.WORKING_SET, "test")
    with memory.applied(big):
        assert memory.batch_for(memory.WORKING_SET // 4, 64, "a stage") == 4  # batches stop growing at WORKING_SET


def test_the_default_budget_is_a_share_of_what_is_available():
    free, where = memory.available_bytes()
    budget = memory.resolve(None)
    assert 0 < budget.limit <= free and where in budget.source and f"{memory.DEFAULT_SHARE:.0%}" in budget.source
    assert memory.resolve(123).limit == 123


def test_what_stages_keep_comes_out_of_the_budget_and_is_dropped_under_a_smaller_one():
    dropped = []
    try:
        with memory.applied(memory.Budget(4000, "test")):
            assert not memory.keep("a", 1001, lambda: dropped.append("a"))  # more than a quarter: refused
            assert memory.keep("a", 600, lambda: dropped.append("a")) and memory.keep("b", 400, lambda: None)
            assert not memory.keep("c", 1, lambda: None)  # the quarter is full
            assert memory.kept_bytes() == 1000
            assert memory.batch_for(100, 64, "a stage") == 30  # (4000 - 1000) // 100
            assert memory.batch_for(3500, 64, "a stage") == 1 and dropped == ["a"]  # kept data yields to a stage
            assert memory.kept_bytes() == 0
            assert memory.keep("a", 600, lambda: dropped.append("a"))
        with memory.applied(memory.Budget(2000, "test")):  # a later build with less: what was kept is freed
            assert memory.kept_bytes() == 0 and dropped == ["a", "a"]
            assert memory.batch_for(100, 64, "a stage") == 20
    finally:
        for owner in ("a", "b", "c"):
            memory.release(owner)
