"""simplify: the graph shrinks (constant folding, dead code, BN folding) and its numbers do not change."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deployc.core.ort import session
from deployc.passes.onnx_util import op_counts
from deployc.passes.simplify import SimplifyConfig, simplify_proto, simplify_stages


def _graph_with_foldable_parts() -> onnx.ModelProto:
    """x → Conv → BatchNormalization → Add(const computed as w*2) → Relu, plus an Identity and a dead branch."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "var"),
        numpy_helper.from_array(rng.standard_normal((1, 4, 1, 1)).astype(np.float32), "c"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Mul", ["c", "two"], ["c2"], name="fold_me"),
        helper.make_node("Identity", ["c2"], ["c2i"], name="identity"),
        helper.make_node("Add", ["bn", "c2i"], ["add"], name="add"),
        helper.make_node("Relu", ["add"], ["y"], name="relu"),
        helper.make_node("Neg", ["conv"], ["dead"], name="dead"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(proto).run(None, {"x": x})[0]


def test_simplify_folds_and_keeps_numbers():
    proto = _graph_with_foldable_parts()
    before = op_counts(proto)
    out = simplify_proto(proto, SimplifyConfig())
    after = op_counts(out)
    assert before == {"Add": 1, "BatchNormalization": 1, "Conv": 1, "Identity": 1, "Mul": 1, "Neg": 1, "Relu": 1}
    for gone in ("BatchNormalization", "Identity", "Mul", "Neg"):
        assert gone not in after, after
    assert after["Conv"] == 1 and sum(after.values()) <= 3
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(proto, x), rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(out, full_check=True)
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def _log_power_graph() -> onnx.ModelProto:
    """y = Log(x·x + 1e-10): a log-power front end (basic-pitch's normalized_log), finite on silence."""
    eps = numpy_helper.from_array(np.array(1e-10, np.float32), "eps")
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["power"], name="square"),
        helper.make_node("Add", ["power", "eps"], ["floored"], name="add_eps"),
        helper.make_node("Log", ["floored"], ["y"], name="log"),
    ]
    graph = helper.make_graph(
        nodes,
        "log_power",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [eps],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_simplify_drops_a_stage_that_changes_the_numbers():
    """onnxscript's no-op rule matches 1e-10 as 'x + 0' (abs_tol 1e-8) and removes the floor: log(0) = -inf on
    silent samples. The stage's result is checked on the samples and dropped, and the pass says so."""
    from onnxscript import rewriter

    proto = _log_power_graph()
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    x[1] = 0.0  # a silent sample
    want = _run(proto, x)
    assert np.isfinite(want).all()
    assert not np.isfinite(_run(rewriter.rewrite(proto), x)).all()  # the defect the check exists for
    out, stages = simplify_stages(proto, SimplifyConfig(onnxsim=False), {"x": x})
    assert stages["rewrite"].startswith("dropped: output 0 has non-finite values"), stages
    assert stages["optimizer"].startswith("dropped"), stages  # its default rewrite rules include the same rule
    np.testing.assert_array_equal(_run(out, x), want)
    assert op_counts(out) == {"Add": 1, "Log": 1, "Mul": 1}


def test_simplify_pass_reports_dropped_stages_in_its_metrics(tmp_path):
    from deployc.compiler.contracts import Context
    from deployc.compiler.instruments import Instruments
    from deployc.compiler.manager import run_pass
    from deployc.core.config import load_config
    from deployc.core.state import ModelState, TensorSpec
    from deployc.data.dataset import Dataset
    from deployc.passes.simplify import Simplify
    from tests.conftest import digits_config

    x = np.zeros((2, 16), np.float32)
    data = Dataset({"x": x}, None, "silence")
    ctx = Context(load_config(digits_config()), None, data, data, tmp_path, Instruments(quiet=True))
    state = ModelState(onnx=_log_power_graph(), inputs=(TensorSpec("x", ("batch", 16)),), facts=frozenset({"onnx"}))
    done = run_pass(Simplify(SimplifyConfig()), state, ctx)
    stages = done.history[-1].metrics["stages"]
    assert stages["onnxsim"] == "kept" and stages["rewrite"].startswith("dropped"), stages
    assert np.isfinite(_run(done.onnx, x)).all()
