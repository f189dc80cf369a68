"""Target tensorrt without a GPU: conformant symmetric Q/DQ ONNX, the parser preflight, the onnxruntime proxy."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deployc.core.ort import session
from deployc.core.state import TensorSpec
from deployc.driver.build import BuildResult, build
from deployc.errors import UsageError
from deployc.targets.tensorrt import (
    AxisRange,
    TensorrtOptions,
    TensorrtTarget,
    conform_qdq,
    engine_unavailable,
    shape_profile,
)
from deployc.targets.tensorrt_support import SUPPORTED_OPS, preflight
from tests.conftest import digits_config, write

PROFILE = {"image": {"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [64, 1, 8, 8]}}


@pytest.fixture(scope="module")
def trt_build(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    out = tmp_path_factory.mktemp("tensorrt") / "out"
    targets = {
        "tensorrt": {"precision": ["fp32", "fp16", "int8"], "profile": {"batch": {"min": 1, "opt": 8, "max": 64}}}
    }
    return build(digits_config(targets=targets), out=out, quiet=True)


def _artifact(result: BuildResult, precision: str) -> dict:
    return next(a for a in result.manifest["artifacts"] if a["precision"] == precision)


def _qdq_zero_points(proto) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return [inits[n.input[2]] for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_int8_onnx_is_symmetric_per_channel_and_passes_its_proxy_gate(trt_build):
    art = _artifact(trt_build, "int8")
    proto = onnx.load(str(trt_build.out_dir / art["path"]))
    onnx.checker.check_model(proto)
    zps = _qdq_zero_points(proto)
    assert len(zps) == art["details"]["preflight"]["qdq_nodes"] == 6 + 2 * 6  # 6 activation pairs, 6 weight DQs
    assert all(z.dtype == np.int8 and not z.any() for z in zps)  # only zero zero-points, int8 only
    inits = {i.name: i for i in proto.graph.initializer}
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_dq and all(inits[n.input[0]].data_type == TensorProto.INT8 for n in weight_dq)  # no int32 bias DQ
    conv_scales = [numpy_helper.to_array(inits[n.input[1]]).size for n in weight_dq]
    assert max(conv_scales) == 32  # per-channel weight scales (layer2 has 32 output channels)
    placement = art["details"]["int8_placement"]
    assert (placement["quantize_linear"], placement["int8_weighted_ops"], placement["residual_adds"]) == (6, 6, 2)
    assert list(placement["kept_high_precision"]) == ["node_linear"]  # the 10-class head: N=10, int8 does not pay
    assert art["details"]["precision"]["int8"] == {"Conv": 6} and "conformance" not in art["details"]
    assert art["metrics"]["drift"] <= 0.01 and art["gate"]["status"] == "pass"
    assert art["bytes"] < 0.5 * _artifact(trt_build, "fp32")["bytes"]


def test_engine_status_and_proxy_runtime_are_recorded(trt_build):
    reason = engine_unavailable()
    for precision in ("fp32", "fp16", "int8"):
        art = _artifact(trt_build, precision)
        assert art["details"]["preflight"]["profile"] == PROFILE
        if reason:
            assert art["details"]["engine"] == f"not built ({reason})"
            assert art["runtime"] == "onnxruntime (TensorRT proxy)" and "metric" in art["metrics"]
    fp16 = onnx.load(str(trt_build.out_dir / _artifact(trt_build, "fp16")["path"]))
    assert any(i.data_type == TensorProto.FLOAT16 for i in fp16.graph.initializer)
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # cast inside, float32 at the edges
    assert _artifact(trt_build, "fp16")["metrics"]["agreement"] == 1.0


def test_unsupported_op_fails_preflight_naming_the_node(tmp_path: Path):
    factory = write(
        tmp_path / "det.py",
        """
        import torch
        from torch import nn

        class DetHead(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.fc = nn.Linear(64, 4)

            def forward(self, x):
                return torch.linalg.det(self.fc(x.flatten(1)).reshape(-1, 2, 2))[:, None]

        def make():
            return DetHead().eval()
    """,
    )
    config = digits_config(
        model={"factory": f"{factory}:make", "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8]}]},
        data={"validation": "digits:test", "metric": "mse"},
        targets={"tensorrt": {}, "onnx": {}},
    )
    result = build(config, out=tmp_path / "out", quiet=True)
    gates = {a["target"]: a["gate"] for a in result.manifest["artifacts"]}
    assert gates["tensorrt"]["status"] == "error" and result.exit_code == 3  # the parser would refuse it
    assert re.search(r"node '\w+' \(Det\): not supported by the TensorRT ONNX parser", gates["tensorrt"]["reason"])
    assert gates["onnx"]["status"] == "pass"  # the target that can run it still ships


def test_asymmetric_qdq_fails_preflight(demo_build):
    proto = onnx.load(str(demo_build.out_dir / "onnx" / "digits.int8.onnx"))  # onnx target: asymmetric uint8
    with pytest.raises(UsageError, match=r"node 'image_QuantizeLinear' \(QuantizeLinear\): quantized type UINT8"):
        preflight(proto, PROFILE, "test")
    shifted = conform_qdq(_conv_relu_qdq())[0]
    for init in shifted.graph.initializer:
        if init.name == "w_z":
            init.CopyFrom(numpy_helper.from_array(np.array([0, 3, 0, 0], np.int8), "w_z"))
    with pytest.raises(UsageError, match=r"node 'w_dq' \(DequantizeLinear\): zero point \[0, 3, 0, 0\] is not 0"):
        preflight(shifted, {"x": PROFILE["image"]}, "test")


def _conv_relu_qdq() -> onnx.ModelProto:
    """x → Conv(DQ(w int8), DQ(b int32)) → Q → DQ → Relu → y: what onnxruntime's QDQ quantizer emits."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 127, (4, 1, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_z"),
        numpy_helper.from_array(np.array([5, -3, 0, 7], np.int32), "b_q"),
        numpy_helper.from_array(np.full(4, 0.02, np.float32), "b_s"),
        numpy_helper.from_array(np.zeros(4, np.int32), "b_z"),
        numpy_helper.from_array(np.float32(0.05), "a_s"),
        numpy_helper.from_array(np.int8(0), "a_z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="w_dq", axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], name="b_dq", axis=0),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "a_s", "a_z"], ["cq"], name="c_q"),
        helper.make_node("DequantizeLinear", ["cq", "a_s", "a_z"], ["cd"], name="c_dq"),
        helper.make_node("Relu", ["cd"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_conformance_folds_int32_bias_and_unquantizes_conv_output():
    src = _conv_relu_qdq()
    with pytest.raises(UsageError, match=r"node 'b_dq' \(DequantizeLinear\): quantized type INT32"):
        preflight(src, PROFILE | {"x": PROFILE["image"]}, "test")
    fixed, stats = conform_qdq(src)
    assert stats == {"int32_bias_folded": 1, "weighted_output_qdq_removed": 1}
    assert [n.op_type for n in fixed.graph.node] == ["DequantizeLinear", "Conv", "Relu"]
    assert preflight(fixed, {"x": PROFILE["image"]}, "test")["zero_points"] == "all 0"
    x = np.random.default_rng(1).random((2, 1, 8, 8), dtype=np.float32)

    def run(m):
        return session(m).run(None, {"x": x})[0]

    before, after = run(src), run(fixed)
    assert np.abs(before - after).max() <= 0.05 / 2 + 1e-6  # only the removed activation rounding differs


def test_profile_from_input_spec_and_its_checks():
    spec = (TensorSpec("image", ("batch", 1, 8, 8)),)
    profile = shape_profile(spec, {"batch": AxisRange(min=2, opt=4, max=16)}, 64)
    assert profile == {"image": {"min": [2, 1, 8, 8], "opt": [4, 1, 8, 8], "max": [16, 1, 8, 8]}}
    assert shape_profile(spec, {}, 64)["image"]["max"] == [64, 1, 8, 8]
    bad = {"x": {"min": [1, 1, 4, 8], "opt": [1, 1, 4, 8], "max": [1, 1, 4, 8]}}
    with pytest.raises(UsageError, match=r"input 'x' axis 2: fixed at 8 in the graph"):
        preflight(conform_qdq(_conv_relu_qdq())[0], bad, "test")
    with pytest.raises(ValueError, match="min ≤ opt ≤ max"):
        AxisRange(min=4, opt=2, max=8)
    assert TensorrtTarget.requires_for(TensorrtOptions(precision=["int8"])) == {"data.calibration"}


def test_support_table_matches_the_cited_operators_md():
    assert {"Conv", "QuantizeLinear", "DequantizeLinear", "Gemm", "Relu", "Cast"} <= set(SUPPORTED_OPS)
    assert not {"Det", "Unique", "ConvInteger", "MatMulInteger", "QLinearConv"} & set(SUPPORTED_OPS)
    assert SUPPORTED_OPS["DequantizeLinear"] == {"INT8", "FP8", "FP4", "INT4"}


def test_pipeline_quantized_graph_is_emitted_as_is_and_checked(tmp_path: Path):
    quantize = {"per_channel": True, "samples": 64}
    symmetric = {"quantize.int8": {"symmetric_activations": True, "activation_type": "int8"}}
    ok = build(
        digits_config(
            passes=[{"export.onnx": {}}, symmetric], quantize=quantize, targets={"tensorrt": {"precision": ["fp32"]}}
        ),
        out=tmp_path / "sym",
        quiet=True,
    )
    (art,) = ok.manifest["artifacts"]
    assert art["precision"] == "int8" and art["details"]["preflight"]["zero_points"] == "all 0"
    assert art["details"]["conformance"]["int32_bias_folded"] == 7 and art["gate"]["status"] == "pass"
    asym = build(  # the default quantize.int8 is asymmetric uint8, which TensorRT's parser refuses
        digits_config(
            passes=[{"export.onnx": {}}, {"quantize.int8": {}}],
            quantize=quantize,
            targets={"tensorrt": {"precision": ["fp32"]}},
        ),
        out=tmp_path / "asym",
        quiet=True,
    )
    (art,) = asym.manifest["artifacts"]
    assert art["gate"]["status"] == "error" and "quantized type UINT8" in art["gate"]["reason"]
