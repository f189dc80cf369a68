"""benchmarks/qdq_mirror.py: the torch mirror of a QDQ graph computes the fp32 graph in fp32 mode, the QDQ graph's
float arithmetic in fake-quant mode, and writes back an int8 graph that onnxruntime runs as the mirror computes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


def _fp32_graph() -> onnx.ModelProto:
    """Conv -> SiLU (Sigmoid, Mul) -> Conv, YOLO's block, with random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig1"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="mul1"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 16, 16])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="session")
def graphs(tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folder = tmp_path_factory.mktemp("qdq_mirror")
    fp32 = _fp32_graph()
    onnx.save(fp32, folder / "fp32.onnx")
    x = np.random.default_rng(1).uniform(0, 1, (6, 3, 16, 16)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": x[i : i + 2]} for i in range(0, 6, 2)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(folder / "fp32.onnx"), str(folder / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return fp32, onnx.load(folder / "int8.onnx"), x


def _ort(proto, x, optimize=True):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts).run(None, {"x": x})[0]


def _mirror(fp32, qdq, x, fake_quant):
    from qdq_mirror import QdqMirror

    mirror = QdqMirror(qdq, fp32, {})
    mirror.fake_quant = fake_quant
    with torch.no_grad():
        return mirror, mirror(torch.from_numpy(x))["y"].numpy()


def test_fp32_mode_is_the_fp32_graph(graphs):
    fp32, qdq, x = graphs
    _, got = _mirror(fp32, qdq, x, False)
    want = _ort(fp32, x)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(_ort(qdq, x) - want).max() > 1e-3  # the int8 graph differs: the check above can fail


def test_fake_quant_mode_is_the_qdq_arithmetic(graphs):
    fp32, qdq, x = graphs
    _, got = _mirror(fp32, qdq, x, True)
    want = _ort(qdq, x, optimize=False)  # onnxruntime running the Q/DQ nodes as written, in float
    err_int8 = np.abs(_ort(qdq, x) - _ort(fp32, x)).mean()
    assert np.abs(got - want).mean() < err_int8 / 20
    # the weights' scales are onnxruntime's (absmax / 127 per output channel)
    from onnx import numpy_helper

    scales = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    w1 = numpy_helper.to_array(fp32.graph.initializer[0])
    np.testing.assert_allclose(scales["w1_scale"], np.abs(w1).reshape(8, -1).max(1) / 127, rtol=1e-6)


def test_export_after_a_change_runs_as_the_mirror(graphs):
    fp32, qdq, x = graphs
    mirror, _ = _mirror(fp32, qdq, x, True)
    with torch.no_grad():
        mirror.weights["conv2"].mul_(1.1)
        mirror.biases["conv2"].add_(0.05)
        for p in mirror.act_log_scales.values():
            p.add_(0.1)
        got = mirror(torch.from_numpy(x))["y"].numpy()
    exported = mirror.export_qdq(qdq)
    before = _ort(qdq, x, optimize=False)
    after = _ort(exported, x, optimize=False)
    assert np.abs(got - before).mean() > 0.01  # the change is visible
    # the same arithmetic: at most a rounding tie flips one output step (float32 scale from exp(log))
    assert np.mean(np.abs(got - after) > 1e-4) < 0.01
    assert np.abs(got - after).max() < 0.02
    # the tuned float weights come back by the fp32 graph's names
    np.testing.assert_allclose(mirror.float_weights()["w2"], numpy_helper_w2(fp32) * 1.1, rtol=1e-6)


def numpy_helper_w2(fp32):
    from onnx import numpy_helper

    return numpy_helper.to_array(fp32.graph.initializer[2])
