"""The memory guard (pipeline/core/memory.py Guard, fed by Dataset.batches): when a batch makes the process grow by
more than the graph's shapes said, the following batches shrink; one sample over the budget is MemoryBudgetExceeded;
and the outputs do not depend on the batch sizes."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from deployc.core import memory
from deployc.core.ort import session
from deployc.data.dataset import Dataset
from deployc.data.reference import run_batched

MB = 1 << 20


def test_batches_shrink_to_the_cost_measured_and_one_sample_over_the_budget_says_so():
    with memory.applied(memory.Budget(100 * MB, "test")):
        guard = memory.Guard(MB, 64, "a stage")
        assert guard.size == 64
        guard.observe(64, 64 * MB + memory.NOISE)  # within the estimate and the noise: nothing changes
        assert guard.size == 64
        guard.observe(64, 64 * 10 * MB)  # ten times the estimate
        assert guard.per_sample == 10 * MB and guard.size == 10
        guard.observe(10, 10 * 20 * MB)
        assert guard.size == 5
        with pytest.raises(
            memory.MemoryBudgetExceeded, match=r"a stage \(measured: the process grew 210 MB for 1 more"
        ):
            guard.observe(1, 200 * MB)
        assert guard.sizes == [64, 64, 10, 1]


def test_without_an_estimate_a_one_sample_probe_sizes_the_batches():
    with memory.applied(memory.Budget(100 * MB, "test")):
        small = memory.Guard(None, 64, "a stage")
        assert small.size == 1
        small.observe(1, MB)  # below the noise floor: the samples are small
        assert small.size == 64
        big = memory.Guard(None, 64, "a stage")
        big.observe(1, 30 * MB)
        assert big.size == 3
        with pytest.raises(memory.MemoryBudgetExceeded, match="no estimate"):
            memory.Guard(None, 64, "a stage").observe(1, 300 * MB)


def test_an_estimate_that_guessed_sizes_probes_one_sample_first_and_then_grows_to_what_fits():
    with memory.applied(memory.Budget(100 * MB, "test")):
        guard = memory.Guard(MB, 64, "a stage", probe=True)
        assert guard.size == 1
        guard.observe(1, MB)  # as estimated
        assert guard.size == 64
        unsure = memory.Guard(MB, 64, "a stage", probe=True)
        unsure.observe(1, 30 * MB)
        assert unsure.size == 3


def _data_dependent(mb_per_unit: int = 1) -> object:
    """x (N, 1) -> y = x + 0 * sum(ConstantOfShape(sum(x) * 2^18)): a float32 tensor of sum(x) MB that shape
    inference cannot size (its length is a value of the data), so the estimate misses it."""
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "per_unit"], ["n_float"]),
        helper.make_node("Cast", ["n_float"], ["n"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["n", "one"], ["shape"]),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
        ),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["x", "nothing"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.float32(mb_per_unit * MB // 4), "per_unit"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.float32(0), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "data_dependent",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_graph_the_shapes_underestimate_runs_in_smaller_batches_with_the_same_outputs():
    proto = _data_dependent()
    x = np.full((24, 1), 24.0, np.float32)  # 24 MB a sample that the shapes do not see
    x[::3] = 23.0
    data = Dataset({"x": x}, None, "test")
    sess = session(proto)

    def run(feed: dict) -> list:
        return sess.run(None, feed)

    with memory.applied(memory.Budget(100 * MB, "test")):
        estimate = memory.graph_activations(proto, {"x": x[:1]})
        assert estimate.peak < 1000 and estimate.unsized == 1  # a few bytes a sample, and one size it had to guess
        guard = data.within_budget(lambda feed: memory.graph_activations(proto, feed), 8, "a run")
        run(next(data.batches(1))[0])  # the session's own first allocations, as validation opens a runtime
        guard.warmed(1)
        outputs = run_batched(run, data, guard)
    assert guard.sizes[0] == 2 and guard.measured[0] > 20 * MB  # a guessed size: one more sample measures first
    assert 1 < max(guard.sizes[1:]) <= 100 // 23 and sum(guard.sizes) == 24  # then what fits the budget
    one_at_a_time = run_batched(run, data, 1)
    np.testing.assert_array_equal(outputs[0], one_at_a_time[0])
    np.testing.assert_array_equal(outputs[0], x)


REFUSED = """
import numpy as np
from deployc.core import memory
from deployc.core.ort import session
from deployc.data.dataset import Dataset
from deployc.data.reference import run_batched
from tests.pipeline.core.test_memory_guard import MB, _data_dependent

proto = _data_dependent()
data = Dataset({"x": np.full((6, 1), 48.0, np.float32)}, None, "test")  # 48 MB a sample, budget 32 MB
sess = session(proto)
with memory.applied(memory.Budget(32 * MB, "test")):
    guard = data.within_budget(lambda feed: memory.graph_activations(proto, feed), 4, "validating g/fp32")
    try:
        run_batched(lambda feed: sess.run(None, feed), data, guard)
    except memory.MemoryBudgetExceeded as exc:
        print(exc)
"""


def test_one_sample_over_the_budget_is_refused_after_the_first_batch_shows_it():
    # a fresh process: the guard sees a runtime that frees its buffers before returning only through a new peak, and
    # a test session's earlier tests have raised the peak far above (a known limit of the guard, in the README)
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", REFUSED], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"validating g/fp32 \(measured: .* for 1 more samples", out.stdout), (
        out.stdout + out.stderr[-2000:]
    )


def test_a_torch_module_is_estimated_from_what_its_layers_return():
    import torch

    module = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 8)).eval()
    feed = {"x": np.ones((1, 64), np.float32)}
    est = memory.module_activations(module, ["x"], feed)
    assert est.tensors == {"0": 4096, "1": 4096, "2": 32}
    assert est.peak == 256 + 4096 + 4096  # while ReLU runs: the input (the caller's), Linear's output and its own
    data = Dataset({"x": np.ones((10, 64), np.float32)}, None, "test")
    with memory.applied(memory.Budget(3 * est.peak + 1, "test")):
        guard = data.within_budget(memory.module_estimate(module, ["x"]), 64, "the reference run")
        list(data.batches(guard))
    assert guard.sizes == [3, 3, 3, 1]
    assert memory.module_activations(module, ["x"], {"x": np.ones((1, 3), np.float32)}) is None  # its run says why
