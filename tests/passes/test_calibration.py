"""Activation ranges shared between int8 passes (passes/calibration.py): one calibration of the build's float graph
serves every graph rewritten from it without new tensors, with the ranges that graph would get itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.passes import calibration
from deployc.passes.qdq_prep import quantizer_ready
from deployc.passes.tensorrt_qdq import named, place, quantize_placed


@pytest.fixture(scope="module")
def calib() -> Dataset:
    x, _ = digits_arrays("train")
    return Dataset({"image": x[:32]}, None, "image")


def _ranges(path: str) -> dict:
    return json.loads(Path(path).read_text())


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_a_rewritten_graph_is_served_the_roots_ranges_equal_to_its_own(digits_proto, calib, method, tmp_path):
    rewritten = quantizer_ready(named(digits_proto))
    before = len(calibration._MEMO)
    shared = _ranges(calibration.calibration_cache(digits_proto, rewritten, calib, method, 16, 99.99, tmp_path))
    again = _ranges(calibration.calibration_cache(digits_proto, digits_proto, calib, method, 16, 99.99, tmp_path))
    assert len(calibration._MEMO) == before + 1  # one calibration for both graphs
    assert shared == again
    own = _ranges(calibration.calibration_cache(rewritten, rewritten, calib, method, 16, 99.99, tmp_path))
    assert own == shared  # what the rewritten graph would get from its own calibration


def test_a_graph_with_a_tensor_the_root_lacks_is_calibrated_itself(digits_proto, calib, tmp_path):
    extra = named(digits_proto)
    out = extra.graph.output[0].name
    extra.graph.node.append(helper.make_node("Relu", [out], ["relu_extra"], name="relu_extra"))
    extra.graph.output[0].name = "relu_extra"
    before = len(calibration._MEMO)
    cache = _ranges(calibration.calibration_cache(digits_proto, extra, calib, "minmax", 16, 99.99, tmp_path))
    assert "relu_extra" in json.dumps(cache)
    assert len(calibration._MEMO) >= before + 1


def test_tensorrt_int8_bytes_do_not_depend_on_the_shared_root(digits_proto, calib):
    graph = quantizer_ready(named(digits_proto))
    placement = place(graph, set())
    via_root, _ = quantize_placed(graph, placement, calib, "minmax", True, 32, 16, root=digits_proto)
    alone, _ = quantize_placed(graph, placement, calib, "minmax", True, 32, 16)
    assert via_root.SerializeToString() == alone.SerializeToString()


def _box_and_score_head() -> onnx.ModelProto:
    """YOLOv8n's head in miniature: box pixels (0-320) and sigmoid class scores (0-1) in one Concat."""
    from onnx import TensorProto, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 16])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32)[:, :, None, None] * 1.0, "w")
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["x4"], name="unsq"),
        helper.make_node("Conv", ["x4", "w"], ["c4"], name="conv"),
        helper.make_node("Squeeze", ["c4", "axes"], ["c"], name="sq"),
        helper.make_node("Mul", ["c", "k"], ["boxes"], name="to_pixels"),
        helper.make_node("Sigmoid", ["c"], ["scores"], name="sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["y"], name="head_concat", axis=1),
    ]
    inits = [
        w,
        numpy_helper.from_array(np.array([3], np.int64), "axes"),
        numpy_helper.from_array(np.float32(80.0), "k"),
    ]
    graph = helper.make_graph(nodes, "head", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_concat_of_pixels_and_scores_stays_float_and_keeps_the_scores():
    from deployc.core.ort import session
    from deployc.passes.quantize import Int8Config, quantize_int8_selected

    proto = _box_and_score_head()
    x = np.random.default_rng(0).uniform(0, 4, (64, 4, 16)).astype(np.float32)
    data = Dataset({"x": x}, None, "x")
    result = quantize_int8_selected(proto, data, Int8Config(samples=64))
    assert list(result.concats_kept) == ["head_concat"]
    assert result.concats_kept["head_concat"].endswith("one int8 scale would leave it 1 of 255 levels")
    with_rule = session(result.proto.SerializeToString(), 1).run(None, {"x": x[:8]})[0][:, 4:]
    ref = 1 / (1 + np.exp(-x[:8]))
    assert np.abs(with_rule - ref).max() < 0.02  # scores keep their int8 Sigmoid resolution (1/255)
    # the same graph with the rule off (ratio above the mismatch): one scale for 0-320 and 0-1 zeroes the scores
    off = quantize_int8_selected(proto, data, Int8Config(samples=64, channel_range_ratio=10_000))
    assert off.concats_kept == {}
    without = session(off.proto.SerializeToString(), 1).run(None, {"x": x[:8]})[0][:, 4:]
    assert np.abs(without - ref).max() > 0.3
