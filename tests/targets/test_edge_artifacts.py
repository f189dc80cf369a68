"""Edge artifacts: channels-last TFLite, output names and metadata the same on every target, read back with each
runtime's own API, and the same bytes whatever folder the model's factory file sits in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deployc import __version__
from deployc.compiler.loader import load_model
from deployc.core.config import load_config, read_labels
from deployc.driver.build import BuildResult, build
from deployc.errors import UsageError
from deployc.targets.metadata import name_outputs
from deployc.targets.tflite import TfliteTarget, convert_fp32
from deployc.targets.tflite_export import edge_signature, keep_reductions_4d
from deployc.targets.tflite_npu import op_report
from deployc.targets.tflite_quantize import widen_constant_ranges
from tests.conftest import edge_config

pytestmark = pytest.mark.skipif(TfliteTarget.available() is not None, reason=str(TfliteTarget.available()))
LABELS = ["cat", "dog", "bird", "fish", "frog"]


def _artifact(result: BuildResult, target: str, precision: str) -> dict:
    return next(a for a in result.manifest["artifacts"] if (a["target"], a["precision"]) == (target, precision))


def _tflite_metadata(path) -> dict[str, str]:
    """The metadata table as ai-edge-litert's own flatbuffer reader gives it."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model(str(path))
    return {
        m.name.decode(): bytes(model.buffers[m.buffer].data).decode()
        for m in model.metadata
        if m.name != b"min_runtime_version"
    }


def test_metadata_round_trips_on_onnx_tflite_and_tensorrt_onnx(edge_build):
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    assert edge_build.exit_code == 0
    for target, precision in (("onnx", "fp32"), ("onnx", "int8"), ("tensorrt", "int8"), ("tflite", "int8")):
        art = _artifact(edge_build, target, precision)
        path = edge_build.out_dir / art["path"]
        if target == "tflite":
            meta = _tflite_metadata(path)
            signature = Interpreter(model_path=str(path)).get_signature_list()["serving_default"]
            assert signature["inputs"] == ["image"] and sorted(signature["outputs"]) == ["features", "logits"]
        else:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            meta = session.get_modelmeta().custom_metadata_map
            assert [o.name for o in session.get_outputs()] == ["logits", "features"]
        ours = {k: v for k, v in meta.items() if k.startswith("deployc.")}
        assert ours == art["details"]["metadata"], target  # the manifest records exactly what the file carries
        assert meta["deployc.model_name"] == "edge" and meta["deployc.model_version"] == "2.1"
        assert (meta["deployc.target"], meta["deployc.precision"]) == (target, precision)
        assert meta["deployc.version"] == __version__
        assert meta["deployc.config_sha256"] == edge_build.manifest["config_sha256"]
        assert json.loads(meta["deployc.labels"]) == LABELS
        (image,) = json.loads(meta["deployc.inputs"])
        assert image["normalize"] == {"mean": [0.4, 0.5, 0.6], "std": 0.25}
        assert image["layout"] == ("nhwc" if target == "tflite" else "nchw")
        outputs = json.loads(meta["deployc.outputs"])
        assert [o["name"] for o in outputs] == ["logits", "features"]
        assert outputs[1]["layout"] == ("nhwc" if target == "tflite" else "nchw") and outputs[0]["layout"] is None
        if target == "tflite":  # int8 in and out: the scale and zero point an app applies
            assert image["dtype"] == "int8" and image["quantization"]["scale"] > 0
            assert isinstance(image["quantization"]["zero_point"], int) and outputs[0]["quantization"]["scale"] > 0


def test_tflite_is_channels_last_without_transposes_and_runs_like_torch(edge_build, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    fp32, int8 = _artifact(edge_build, "tflite", "fp32"), _artifact(edge_build, "tflite", "int8")
    for art in (fp32, int8):
        assert "TRANSPOSE" not in art["details"]["ops"] and art["details"]["ops"]["MEAN"] == 1
        assert art["inputs"][0]["shape"] == [1, 16, 16, 3] and art["outputs"][1]["shape"] == [1, 8, 8, 8]
    assert _mean_axes(edge_build.out_dir / int8["path"]) == [[1, 2]]  # H and W of NHWC: Ethos-U runs it
    model = load_model(load_config(edge_config(tmp_path)))
    x = np.random.default_rng(1).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    logits, features = (t.detach().numpy() for t in model.module(torch.from_numpy(x)))
    runner = Interpreter(model_path=str(edge_build.out_dir / fp32["path"])).get_signature_runner()
    out = runner(image=x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["features"].transpose(0, 3, 1, 2), features, rtol=1e-4, atol=1e-5)
    assert int8["gate"]["status"] == "pass" and int8["metrics"]["cosine"] > 0.99  # validation fed it NHWC


def _mean_axes(path) -> list[list[int]]:
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model(str(path))
    graph = model.subgraphs[0]
    axes = []
    for op in graph.operators:
        if fb.opcode_to_name(model, op.opcodeIndex) == "MEAN":
            tensor = graph.tensors[op.inputs[1]]
            axes.append(sorted(np.frombuffer(bytes(model.buffers[tensor.buffer].data), np.int32).tolist()))
    return axes


def test_nchw_option_keeps_the_models_layout(tmp_path):
    config = load_config(edge_config(tmp_path))
    state = load_model(config)
    signature = edge_signature(state, lambda n: ["logits", "features"], "nchw")
    assert signature.input_layouts == ("nchw",) and signature.output_layouts == (None, "nchw")
    flatbuffer = convert_fp32(state, signature)
    ops, _, _ = op_report(flatbuffer)
    assert ops.get("TRANSPOSE", 0) >= 2  # NCHW in, NCHW features out: the converter transposes at the edges
    assert ops["MEAN"] == 1


def test_same_bytes_whatever_folder_the_factory_is_in(edge_build, tmp_path):
    """The same model file and config in another folder: byte-identical artifacts and manifest (tensor names once
    carried deployc_user_<hash of the file's path>)."""
    folder = tmp_path / "elsewhere" / "deeper"
    other = build(edge_config(folder), out=folder / "out", quiet=True)
    for a, b in zip(edge_build.manifest["artifacts"], other.manifest["artifacts"]):
        assert (a["path"], a["sha256"]) == (b["path"], b["sha256"])
    assert (edge_build.out_dir / "manifest.json").read_bytes() == (other.out_dir / "manifest.json").read_bytes()
    tflite = (other.out_dir / _artifact(other, "tflite", "int8")["path"]).read_bytes()
    assert b"deployc_user_" not in tflite and b"EdgeNet/" in tflite


def test_spatial_reductions_become_4d_and_keep_their_values():
    class Reductions(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x.sum((-1, -2)), x.amax(dim=(2, 3)), x.mean(1), x.mean((2, 3), keepdim=True)

    x = torch.randn(2, 4, 5, 6)
    program = torch.export.export(Reductions(), (x,))
    before = program.module()(x)
    assert keep_reductions_4d(program.graph_module.graph) == 3  # not the channel mean, not the one with keepdim
    program.graph_module.recompile()
    after = program.module()(x)
    for a, b in zip(before, after):
        assert a.shape == b.shape and torch.allclose(a, b)


def test_constant_calibration_ranges_get_a_non_empty_range_holding_zero():
    ranges = {
        "dead_relu": {"min": np.zeros(1, np.float32), "max": np.zeros(1, np.float32)},
        "constant": {"min": np.full(1, 2.0, np.float32), "max": np.full(1, 2.0, np.float32)},
        "live": {"min": np.full(1, -1.0, np.float32), "max": np.full(1, 3.0, np.float32)},
    }
    assert widen_constant_ranges(ranges) == ["dead_relu", "constant"]
    assert (ranges["dead_relu"]["min"][0], ranges["dead_relu"]["max"][0]) == (0.0, 1.0)
    assert (ranges["constant"]["min"][0], ranges["constant"]["max"][0]) == (0.0, 2.0)
    assert (ranges["live"]["min"][0], ranges["live"]["max"][0]) == (-1.0, 3.0)


def test_onnx_outputs_renamed_without_renaming_an_input(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2]) for n in ("r", "x")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    named = name_outputs(proto, ["relu", "passthrough"])
    onnx.checker.check_model(named)
    assert [i.name for i in named.graph.input] == ["x"] and [o.name for o in named.graph.output] == [
        "relu",
        "passthrough",
    ]
    session = ort.InferenceSession(named.SerializeToString(), providers=["CPUExecutionProvider"])
    relu, same = session.run(None, {"x": np.array([-1.0, 2.0], np.float32)})
    assert relu.tolist() == [0.0, 2.0] and same.tolist() == [-1.0, 2.0]
    with pytest.raises(UsageError, match="already names another value"):
        name_outputs(proto, ["x", "y"])


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("cat\n\ndog\n", "line 2 is empty"),
        ("", "holds no label"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_labels_files_are_refused_naming_the_file(tmp_path, text, error):
    path = tmp_path / "labels.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    config = load_config({**edge_config(tmp_path), "model": {**edge_config(tmp_path)["model"], "labels": str(path)}})
    path.write_bytes(text if isinstance(text, bytes) else text.encode())  # edge_config wrote its own labels.txt
    with pytest.raises(UsageError, match=f"model.labels: '{path}'.*{error}"):
        read_labels(config)


def test_labels_must_fit_an_output_before_anything_is_built(tmp_path):
    config = edge_config(tmp_path)
    config["model"] = {**config["model"], "labels": ["a", "b"]}
    with pytest.raises(
        UsageError, match=r"2 labels, but no output has 2 classes \(logits \[batch, 5\], features \[batch, 8, 8, 8\]\)"
    ):
        build(config, out=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_config_names_and_normalize_are_checked(tmp_path):
    model = edge_config(tmp_path)["model"]
    for bad, error in (
        ({"outputs": ["image", "x"]}, "also an input's name"),
        ({"outputs": ["a b", "x"]}, "not an output name"),
        ({"inputs": [{**model["inputs"][0], "normalize": {"mean": [0.1, 0.2], "std": 1}}]}, "2 values per channel"),
        ({"inputs": [{**model["inputs"][0], "normalize": {"mean": 0.5, "std": 0}}]}, "std holds 0"),
    ):
        with pytest.raises(UsageError, match=error):
            load_config({**edge_config(tmp_path), "model": {**model, **bad}})


def test_model_outputs_must_match_the_models_outputs(tmp_path):
    config = edge_config(tmp_path)
    config["model"] = {**config["model"], "outputs": ["logits"]}
    config["targets"] = {"onnx": {"precision": ["fp32"]}}
    with pytest.raises(UsageError, match=r"model.outputs: names 1 output\(s\) \(logits\), but the model returns 2"):
        build(config, out=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
