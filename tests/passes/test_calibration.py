"""Activation ranges shared between int8 passes (passes/calibration.py): one calibration of the build's float graph
serves every graph rewritten from it without new tensors, with the ranges that graph would get itself."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import helper

from deployc.data import Dataset, digits_arrays
from deployc.passes import calibration
from deployc.passes.qdq_prep import quantizer_ready
from deployc.passes.tensorrt_qdq import named, place, quantize_placed


@pytest.fixture(scope="module")
def digits_proto(digits_onnx: Path) -> onnx.ModelProto:
    return onnx.load(str(digits_onnx))


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
