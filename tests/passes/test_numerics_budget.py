"""The numeric checks of the ONNX passes (quantize.fp16's range check, simplify's and the opset upgrade's output
checks) run their samples in batches the memory budget sizes, and a budget that fits one sample gives the verdicts of
an unbounded one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deployc.core import memory
from deployc.data.dataset import Dataset
from deployc.passes.fp16 import finite_fp16
from deployc.passes.onnx_numerics import (
    Samples,
    batched_outputs,
    batches_mismatch,
    graph_inputs,
    intermediate_stats,
    output_mismatch,
    run_outputs,
    sample_feeds,
)
from deployc.passes.opset import upgrade_for_qdq
from deployc.passes.simplify import SimplifyConfig, simplify_stages

SAMPLES = 6
UNBOUNDED = memory.Budget(1 << 40, "test: unbounded")
WHAT = "test"


def big_activations(opset: int = 18) -> onnx.ModelProto:
    """x[N, 8, 64, 64] → Relu → ×1e5 (beyond fp16) → ×1e-5 → Transpose (batch moves to axis 3) → Mul(t, t) → Log:
    overflow in the middle, values fp16 flushes to zero in front of the Log on quiet samples."""
    k = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("up", 1e5), ("down", 1e-5))]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "up"], ["big"], name="scale_up"),
        helper.make_node("Mul", ["big", "down"], ["back"], name="scale_down"),
        helper.make_node("Transpose", ["back"], ["t"], perm=[1, 2, 3, 0], name="transpose"),
        helper.make_node("Mul", ["t", "t"], ["power"], name="square"),
        helper.make_node("Log", ["power"], ["y"], name="log"),
    ]
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        k,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def samples() -> Dataset:
    """Quiet samples (x² flushes to zero in fp16) with one loud one whose values fp16 overflows after ×1e5."""
    x = np.random.default_rng(0).uniform(1e-9, 1e-6, (SAMPLES, 8, 64, 64)).astype(np.float32)
    x[3] *= 1e6
    return Dataset({"x": x}, None, "test")


def names(proto: onnx.ModelProto) -> list[str]:
    return [v.name for v in graph_inputs(proto)] + [n.output[0] for n in proto.graph.node]


def one_sample_budget(proto: onnx.ModelProto, kept: list[str], scratch: int = 0) -> memory.Budget:
    """A budget one sample of a run returning `kept` just fits, two do not."""
    with memory.applied(memory.Budget(1, "probe")), pytest.raises(memory.MemoryBudgetExceeded) as refused:
        Samples(samples()).batch_size(proto, kept, WHAT, scratch)
    need = memory.parse_size(str(refused.value).split(" needs ")[1].split(" for ")[0])
    return memory.Budget(int(need * 1.2), "test: one sample")


def recorded_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Samples per batch of every batch a check runs (Samples.batches spied on, not replaced)."""
    sizes: list[int] = []
    original = Samples.batches

    def spy(self, *args, **kwargs):
        for feed in original(self, *args, **kwargs):
            sizes.append(len(next(iter(feed.values()))))
            yield feed

    monkeypatch.setattr(Samples, "batches", spy)
    return sizes


def test_the_budget_sizes_the_batches():
    proto, data = big_activations(), samples()
    kept = names(proto)
    per_sample = memory.graph_activations(proto, {"x": data.inputs["x"][:1]})
    need = per_sample.exposed(kept)
    assert need >= 6 * 8 * 64 * 64 * 4  # the input and five node outputs of 128 kB each, kept at once
    sizes = {}
    for label, budget in (("unbounded", UNBOUNDED), ("two", memory.Budget(2 * need + need // 2, "test"))):
        with memory.applied(budget):
            sizes[label] = Samples(data).batch_size(proto, kept, WHAT)
            batches = [len(f["x"]) for f in Samples(data).batches(proto, kept, WHAT)]
        assert sum(batches) == SAMPLES and max(batches) == sizes[label]
    assert sizes == {"unbounded": SAMPLES, "two": 2}
    with memory.applied(memory.Budget(need // 2, "test")), pytest.raises(memory.MemoryBudgetExceeded, match=WHAT):
        Samples(data).batch_size(proto, kept, WHAT)


def test_fp16_check_same_verdict_under_a_one_sample_budget(monkeypatch):
    proto, feeds = big_activations(), sample_feeds(big_activations(), samples(), SAMPLES)
    with memory.applied(UNBOUNDED):
        whole = finite_fp16(proto, feeds)
    sizes = recorded_batches(monkeypatch)
    with memory.applied(one_sample_budget(proto, names(proto), scratch=2)):
        tiny = finite_fp16(proto, feeds)
    assert sizes and set(sizes) == {1}  # every run of the check went one sample at a time
    assert whole.kept == tiny.kept and whole.finite is tiny.finite is True
    assert set(whole.kept) >= {"scale_up", "scale_down", "log"}  # overflow and underflow both found
    assert whole.proto.SerializeToString(deterministic=True) == tiny.proto.SerializeToString(deterministic=True)
    with memory.applied(memory.Budget(1 << 20, "test")), pytest.raises(memory.MemoryBudgetExceeded, match="fp16"):
        finite_fp16(proto, feeds)  # refused, not converted unguided


def test_streamed_statistics_equal_one_run():
    proto, data = big_activations(), samples()
    kept = names(proto)
    one_batch = intermediate_stats(proto, {"x": data.inputs["x"]}, kept)
    with memory.applied(one_sample_budget(proto, kept, scratch=2)):
        streamed = intermediate_stats(proto, Samples(data), kept)
    assert streamed == one_batch
    assert one_batch["big"].absmax > 65504 and one_batch["power"].flushed > 0


def test_output_checks_same_verdict_batched(monkeypatch):
    proto, data = big_activations(), samples()
    feeds = Samples(data)
    changed = big_activations()
    changed.graph.initializer[1].float_data[0] = 2e-5  # log(4x²) = log(x²) + 1.4: beyond the tolerance
    whole = {"x": data.inputs["x"]}
    with memory.applied(one_sample_budget(proto, ["y"])):
        ref = list(batched_outputs(proto, Samples(data, 1)))
        assert len(ref) == SAMPLES
        assert batches_mismatch(ref, batched_outputs(proto, Samples(data, 1))) is None
        got = batches_mismatch(ref, batched_outputs(changed, Samples(data, 1)))
    assert got == output_mismatch(run_outputs(proto, whole), run_outputs(changed, whole)) is not None
    sizes = recorded_batches(monkeypatch)
    with memory.applied(one_sample_budget(proto, ["y"])):
        stages = simplify_stages(proto, SimplifyConfig(), feeds)[1]
        upgraded = upgrade_for_qdq(big_activations(opset=11), feeds)
    budgeted, sizes[:] = list(sizes), []
    with memory.applied(UNBOUNDED):
        assert simplify_stages(proto, SimplifyConfig(), feeds)[1] == stages
        assert upgrade_for_qdq(big_activations(opset=11), feeds).per_channel_blocked == upgraded.per_channel_blocked
    assert set(sizes) == {SAMPLES}
    sizes = budgeted
    assert upgraded.to_opset == 13 and upgraded.per_channel_blocked is None
    assert sizes and set(sizes) == {1}  # simplify's and the upgrade's checks went one sample at a time


def test_error_and_scale_reduced_across_batches():
    """The tolerance is relative to an output's largest value over every sample, not each batch's."""
    ref = [np.array([[1.0, 1.0]], np.float32), np.array([[1000.0, 1000.0]], np.float32)]
    got = [np.array([[1.5, 1.0]], np.float32), np.array([[1000.0, 1000.0]], np.float32)]
    joined = output_mismatch([np.concatenate(ref)], [np.concatenate(got)])
    assert joined is None and batches_mismatch([[r] for r in ref], [[g] for g in got]) is None
    assert batches_mismatch([[ref[0]]], [[got[0]]]) == output_mismatch([ref[0]], [got[0]]) is not None
    got[1][0, 1] = np.inf
    assert batches_mismatch([[r] for r in ref], [[g] for g in got]) == output_mismatch(
        [np.concatenate(ref)], [np.concatenate(got)]
    )
