"""nonnegative_tensors: which tensors of a graph can never be negative, from the graph alone."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deployc.passes.nonnegative import nonnegative_tensors


def _graph() -> onnx.GraphProto:
    """YOLOv8's anchor grid (Shape → Range → Add 0.5), its DFL (Softmax → Conv with weights 0..15), and their
    signed neighbours: the box offset (Sub), a Conv with signed weights, a cubic Resize, a Clip with floor -1."""
    inits = [
        numpy_helper.from_array(np.array(3, np.int64), "axis3"),
        numpy_helper.from_array(np.float32(0), "zero"),
        numpy_helper.from_array(np.float32(1), "one"),
        numpy_helper.from_array(np.float32(0.5), "half"),
        numpy_helper.from_array(np.float32(-1), "minus_one"),
        numpy_helper.from_array(np.arange(16, dtype=np.int8).reshape(1, 16, 1, 1), "dfl_q"),
        numpy_helper.from_array(np.float32(1.0), "dfl_scale"),
        numpy_helper.from_array(np.int8(0), "dfl_zero"),
        numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16, 1, 1), "signed_w"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "axis3"], ["width"]),
        helper.make_node("Cast", ["width"], ["width_f"], to=TensorProto.FLOAT),
        helper.make_node("Range", ["zero", "width_f", "one"], ["grid"]),
        helper.make_node("Add", ["grid", "half"], ["anchors"]),
        helper.make_node("Softmax", ["x"], ["probs"], axis=1),
        helper.make_node("DequantizeLinear", ["dfl_q", "dfl_scale", "dfl_zero"], ["dfl_w"]),
        helper.make_node("Conv", ["probs", "dfl_w"], ["distance"]),
        helper.make_node("Sub", ["anchors", "distance"], ["box"]),
        helper.make_node("Conv", ["probs", "signed_w"], ["signed"]),
        helper.make_node("Resize", ["probs", "", "scales"], ["cubic"], mode="cubic"),
        helper.make_node("Resize", ["probs", "", "scales"], ["nearest"], mode="nearest"),
        helper.make_node("Clip", ["x", "minus_one"], ["floor_minus_one"]),
        helper.make_node("Clip", ["x", "zero"], ["relu6ish"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 4])
    outs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in ("box", "signed", "cubic")]
    return helper.make_graph(nodes, "g", [x], outs, inits)


def test_the_anchor_grid_and_the_dfl_are_proven_nonnegative_their_signed_neighbours_not():
    found = nonnegative_tensors(_graph())
    assert {"grid", "anchors", "probs", "dfl_w", "distance", "nearest", "relu6ish"} <= found
    assert not {"x", "box", "signed", "cubic", "floor_minus_one", "signed_w", "minus_one"} & found
