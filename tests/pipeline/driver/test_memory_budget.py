"""The memory budget (build.max_memory, pipeline/core/memory.py) on a small synthetic graph: a stage that cannot fit
one sample makes its artifact's gate `error` with the reason, and the other artifacts are validated and published."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deployc.core import memory
from deployc.driver.build import build

WIDTH = 4096  # floats per sample of each intermediate tensor: 16 kB


def _long_chain(path: Path) -> Path:
    """x (N, 64) -> MatMul -> ten elementwise ops on (N, 4096) -> MatMul -> y (N, 8): running it holds two 16 kB
    tensors a sample at a time; calibration, which holds every tensor of a batch, ~180 kB a sample."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((64, WIDTH)).astype(np.float32) * 0.1, "w_in"),
        numpy_helper.from_array(rng.standard_normal((WIDTH, 8)).astype(np.float32) * 0.05, "w_out"),
        numpy_helper.from_array(np.float32(0.9), "k"),
    ]
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["t0"], name="proj")]
    for i in range(10):
        op = ("Relu", "Mul", "Add")[i % 3]
        ins = [f"t{i}"] if op == "Relu" else [f"t{i}", "k"]
        nodes.append(helper.make_node(op, ins, [f"t{i + 1}"], name=f"op{i}"))
    nodes.append(helper.make_node("MatMul", ["t10", "w_out"], ["y"], name="head"))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_an_artifact_whose_quantization_cannot_fit_one_sample_is_error_and_the_rest_ship(tmp_path: Path):
    model = _long_chain(tmp_path / "chain.onnx")
    x = np.random.default_rng(1).standard_normal((24, 64)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, calib_x=x[::-1].copy())
    feed = {"x": x[:1]}
    est = memory.graph_activations(onnx.load(model), feed)
    budget = 100_000
    assert est.peak < budget / 2 < budget < sum(est.tensors.values())  # inference fits, holding every tensor not
    config = {
        "name": "chain",
        "model": {"onnx": str(model)},
        "data": {"validation": str(tmp_path / "data.npz"), "metric": "cosine"},
        "targets": {"onnx": {"precision": ["fp32", "int8"]}},
        "validate": {"latency_runs": 1},
        "build": {"max_memory": "100kB"},
    }
    result = build(config, out=tmp_path / "out", quiet=True)
    assert result.exit_code == 3
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    gates = {a["precision"]: a["gate"] for a in manifest["artifacts"]}
    assert gates["fp32"]["status"] == "pass"
    assert gates["int8"]["status"] == "error"
    # the first stage holding every tensor of a sample says so: the channel-range check, before calibration
    assert re.search(
        r"(the channel-range check|calibration) needs [0-9.]+ kB for one sample, more than the memory budget "
        r"100 kB \(build.max_memory\)",
        gates["int8"]["reason"],
    )
    assert (tmp_path / "out" / "onnx" / "chain.fp32.onnx").is_file()
    assert not (tmp_path / "out" / "onnx" / "chain.int8.onnx").exists()
    timings = json.loads((tmp_path / "out" / "timings.json").read_text())
    assert timings["memory"]["budget"] == {"bytes": budget, "source": "build.max_memory"}
    assert timings["memory"]["peak_rss_bytes"] >= memory.peak_rss_bytes() // 2  # this process's high-water mark
    junit = (tmp_path / "out" / "junit.xml").read_text()
    assert "needs" in junit and "memory budget 100 kB" in junit


def test_a_budget_below_one_sample_of_the_reference_run_is_exit_2_with_nothing_written(tmp_path: Path):
    from deployc.errors import UsageError

    model = _long_chain(tmp_path / "chain.onnx")
    x = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    config = {
        "name": "chain",
        "model": {"onnx": str(model)},
        "data": {"validation": str(tmp_path / "data.npz"), "metric": "cosine"},
        "build": {"max_memory": "10kB"},
    }
    with pytest.raises(UsageError, match=r"the reference run needs .* memory budget 10 kB \(build.max_memory\)"):
        build(config, out=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out" / "manifest.json").exists()
