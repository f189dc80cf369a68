"""targets.onnx.runtimes: [onnxruntime, openvino] — every onnx artifact validated and timed on OpenVINO too (its own
gate row '<precision>@openvino'): with int8_placement: auto (default) the int8 row is a file of its own, with the
Q/DQ OpenVINO fuses; the other rows, and int8 with an explicit placement, run the onnxruntime row's file. Needs the
`openvino` extra (in `dev`); skipped without it."""

from __future__ import annotations

import collections
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from deployc.driver.build import build
from deployc.passes import calibration
from deployc.passes.cpu_int8 import profile
from deployc.targets.onnx import OnnxOptions
from tests.conftest import write

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed (extra 'openvino')"
)

SILU_NET = """
import torch
from torch import nn


def block(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.SiLU())


def make():
    torch.manual_seed(0)
    return nn.Sequential(block(3, 16, 2), block(16, 16), block(16, 32, 2), nn.Conv2d(32, 8, 1)).eval()
"""


def silu_config(folder: Path, **onnx_options: object) -> dict:
    """A tiny conv net with SiLU after every conv (YOLOv8's activation), random images, cosine to its fp32 outputs."""
    write(folder / "silu_net.py", SILU_NET)
    x = np.random.default_rng(0).uniform(0, 1, (96, 3, 32, 32)).astype(np.float32)
    np.savez(folder / "data.npz", image=x[:32], calib_image=x[32:])
    return {
        "name": "silu",
        "base_dir": str(folder),
        "model": {"factory": "silu_net.py:make", "inputs": [{"name": "image", "shape": ["batch", 3, 32, 32]}]},
        "data": {"validation": "data.npz", "calibration": "data.npz", "metric": "cosine"},
        "quantize": {"samples": 64},
        "targets": {"onnx": {"precision": ["fp32", "int8"], "runtimes": ["onnxruntime", "openvino"], **onnx_options}},
        "validate": {"max_drift": 0.02, "latency_runs": 2},
    }


@pytest.fixture(scope="module")
def per_runtime(tmp_path_factory: pytest.TempPathFactory):
    """One build with int8_placement left at auto: (result, calibrations it computed)."""
    folder = tmp_path_factory.mktemp("silu")
    before = len(calibration._MEMO)
    result = build(silu_config(folder, threads=1), out=folder / "out", quiet=True)
    return result, len(calibration._MEMO) - before


def _rows(result) -> dict:
    return {a["precision"]: a for a in result.manifest["artifacts"]}


def _graph(result, row: dict) -> onnx.ModelProto:
    return onnx.load(str(result.out_dir / row["path"]))


def _quantized_outputs_of(proto: onnx.ModelProto) -> collections.Counter:
    """How many QuantizeLinear read the output of each op type (which op outputs carry int8)."""
    producer = {t: n.op_type for n in proto.graph.node for t in n.output}
    return collections.Counter(
        producer.get(n.input[0], "input") for n in proto.graph.node if n.op_type == "QuantizeLinear"
    )


def _openvino_layers(path: Path) -> collections.Counter:
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(path), "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    )
    info = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    return collections.Counter((i["layerType"].astype(str), i["runtimePrecision"].astype(str)) for i in info)


def test_runtimes_list_onnxruntime_first_once():
    assert OnnxOptions().runtimes == ["onnxruntime"]
    assert OnnxOptions().int8_placement == "auto"
    for bad in (["openvino"], ["onnxruntime", "openvino", "openvino"], []):
        with pytest.raises(ValidationError, match="onnxruntime first"):
            OnnxOptions(runtimes=bad)


@needs_openvino
def test_each_runtime_gets_its_own_int8_file_gated_on_it(per_runtime):
    result, _ = per_runtime
    rows = _rows(result)
    assert list(rows) == ["fp32", "int8", "int8@openvino", "fp32@openvino"]
    ort, ov = rows["int8"], rows["int8@openvino"]
    assert (ort["runtime"], ov["runtime"]) == ("onnxruntime", "openvino")
    assert ort["path"] == "onnx/silu.int8.onnx" and ov["path"] == "onnx/silu.int8.openvino.onnx"
    assert ort["sha256"] != ov["sha256"]
    assert ort["details"]["int8_placement"]["runtime"] == "onnxruntime"
    assert ov["details"]["int8_placement"]["runtime"] == "openvino"
    assert "same_file_as" not in ov["details"]
    for row in (ort, ov):
        assert row["gate"]["status"] == "pass" and row["metrics"]["drift"] < 0.02
        assert row["details"]["int8_coverage"]["macs"] == 1.0
    twin = rows["fp32@openvino"]  # other precisions: the same file on both runtimes
    assert twin["sha256"] == rows["fp32"]["sha256"] and twin["details"]["same_file_as"] == "onnx/fp32"
    assert twin["gate"]["status"] == "pass"
    assert result.exit_code == 0


@needs_openvino
def test_each_file_carries_the_qdq_its_runtime_fuses(per_runtime):
    result, _ = per_runtime
    rows = _rows(result)
    ort, ov = (_quantized_outputs_of(_graph(result, rows[p])) for p in ("int8", "int8@openvino"))
    # onnxruntime's QLinear kernels: int8 out of every Conv and inside each SiLU (Sigmoid, then Mul)
    assert ort["Conv"] == 4 and ort["Sigmoid"] == 3 and ort["Mul"] == 3
    # OpenVINO's: int8 only into the Convs (each SiLU's output), the Conv+SiLU fused in float
    assert ov["Conv"] == 0 and ov["Sigmoid"] == 0 and ov["Mul"] == 3
    tuned = {p: next(r for r in rows[p]["passes"] if r["name"] == "cpu.int8") for p in ("int8", "int8@openvino")}
    assert tuned["int8"]["metrics"]["float_islands"] == 0  # onnxruntime fuses every pair of its file
    assert tuned["int8@openvino"]["metrics"]["qdq_pairs_dropped_for_openvino"] > 0
    # the 3-channel stem padded to 4 for MLAS's int8 conv on x86, not for OpenVINO (one Pad layer more there)
    assert tuned["int8"]["metrics"]["convs_padded"] == (1 if profile("auto").pad_conv_channels else 0)
    assert tuned["int8@openvino"]["metrics"]["convs_padded"] == 0
    layers = _openvino_layers(result.out_dir / rows["int8@openvino"]["path"])
    assert layers[("Convolution", "u8")] == 4 and layers[("Convolution", "f32")] == 0
    assert sum(v for (t, _), v in layers.items() if t == "FakeQuantize") <= 1  # the graph input's, at most


@needs_openvino
def test_both_int8_files_share_one_calibration(per_runtime):
    result, calibrations = per_runtime
    quantized = [p for a in result.manifest["artifacts"] for p in a["passes"] if p["name"] == "quantize.int8"]
    assert len(quantized) == 2 and calibrations == 1


def test_without_openvino_its_rows_are_skipped_with_the_reason(tmp_path: Path, monkeypatch):
    import deployc.targets.onnx_openvino as onnx_openvino

    monkeypatch.setattr(onnx_openvino, "openvino_missing", lambda: "openvino is not installed (pip install ...)")
    result = build(silu_config(tmp_path), out=tmp_path / "out", quiet=True)
    rows = _rows(result)
    assert list(rows) == ["fp32", "int8", "int8@openvino", "fp32@openvino"]
    for precision in ("int8@openvino", "fp32@openvino"):
        gate = rows[precision]["gate"]
        assert gate["status"] == "skipped" and "openvino is not installed" in gate["reason"]
    assert rows["int8"]["gate"]["status"] == rows["fp32"]["gate"]["status"] == "pass"
    assert result.exit_code == 0


@needs_openvino
@pytest.mark.parametrize("placement", ["onnxruntime", "openvino"])
def test_an_explicit_placement_is_one_int8_file_for_both_runtimes(tmp_path: Path, placement: str):
    config = silu_config(tmp_path, precision=["int8"], int8_placement=placement)
    result = build(config, out=tmp_path / "out", quiet=True)
    rows = _rows(result)
    assert list(rows) == ["int8", "int8@openvino"]
    assert rows["int8@openvino"]["sha256"] == rows["int8"]["sha256"]
    assert rows["int8@openvino"]["details"]["same_file_as"] == "onnx/int8"
    assert rows["int8"]["gate"]["status"] == rows["int8@openvino"]["gate"]["status"] == "pass"
    tuned = next(p for p in rows["int8"]["passes"] if p["name"] == "cpu.int8")
    assert ("qdq_pairs_dropped_for_openvino" in tuned["metrics"]) is (placement == "openvino")
    quantized = next(p for p in rows["int8"]["passes"] if p["name"] == "quantize.int8")
    assert quantized["config"]["shared_concat_ranges"] is (placement == "openvino")
    assert result.exit_code == 0
