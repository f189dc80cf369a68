"""targets.onnx.runtimes: [onnxruntime, openvino] — every onnx artifact validated and timed on OpenVINO too (the
same file, its own gate row '<precision>@openvino'). Needs the `openvino` extra; skipped without it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from deployc.driver.build import build
from deployc.targets.onnx import OnnxOptions

CONFIG = {
    "name": "digits-ov",
    "model": {
        "factory": "deployc.examples.digits_cnn:pretrained",
        "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float32"}],
    },
    "data": {"validation": "digits:test", "calibration": "digits:train", "metric": "top1"},
    "quantize": {"samples": 128},
    "targets": {"onnx": {"precision": ["fp32", "int8"], "runtimes": ["onnxruntime", "openvino"], "threads": 1}},
    "validate": {"max_drift": 0.02, "latency_runs": 2},
}


def test_runtimes_list_onnxruntime_first_once():
    assert OnnxOptions().runtimes == ["onnxruntime"]
    for bad in (["openvino"], ["onnxruntime", "openvino", "openvino"], []):
        with pytest.raises(ValidationError, match="onnxruntime first"):
            OnnxOptions(runtimes=bad)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed (extra 'openvino')")
def test_openvino_validates_the_same_files(tmp_path: Path):
    result = build(CONFIG, out=tmp_path / "out", quiet=True)
    arts = {a["precision"]: a for a in result.manifest["artifacts"]}
    assert set(arts) == {"fp32", "int8", "fp32@openvino", "int8@openvino"}
    for p in ("fp32", "int8"):
        ort, ov = arts[p], arts[f"{p}@openvino"]
        assert ov["runtime"] == "openvino" and ov["gate"]["status"] == "pass"
        assert ov["sha256"] == ort["sha256"] and ov["path"] == ort["path"]
        assert abs(ov["metrics"]["metric"] - ort["metrics"]["metric"]) <= 0.01  # same int8 math, other kernels
    assert arts["int8@openvino"]["details"]["int8_coverage"]["macs"] == 1.0
    assert result.exit_code == 0


def test_without_openvino_the_twin_is_skipped_with_the_reason(tmp_path: Path, monkeypatch):
    import deployc.targets.onnx as onnx_target

    monkeypatch.setattr(onnx_target, "openvino_missing", lambda: "openvino is not installed (pip install ...)")
    config = {**CONFIG, "targets": {"onnx": {"precision": ["fp32"], "runtimes": ["onnxruntime", "openvino"]}}}
    result = build(config, out=tmp_path / "out", quiet=True)
    twin = next(a for a in result.manifest["artifacts"] if a["precision"] == "fp32@openvino")
    assert twin["gate"]["status"] == "skipped" and "openvino is not installed" in twin["gate"]["reason"]
    assert result.exit_code == 0


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed (extra 'openvino')")
def test_openvino_placement_is_built_gated_and_recorded(tmp_path: Path):
    onnx_options = {**CONFIG["targets"]["onnx"], "precision": ["int8"], "int8_placement": "openvino"}
    result = build({**CONFIG, "targets": {"onnx": onnx_options}}, out=tmp_path / "out", quiet=True)
    arts = {a["precision"]: a for a in result.manifest["artifacts"]}
    assert arts["int8"]["gate"]["status"] == arts["int8@openvino"]["gate"]["status"] == "pass"
    tuned = next(p for p in arts["int8"]["passes"] if p["name"] == "cpu.int8")
    assert tuned["metrics"]["qdq_pairs_dropped_for_openvino"] > 0
    quantized = next(p for p in arts["int8"]["passes"] if p["name"] == "quantize.int8")
    assert quantized["config"]["shared_concat_ranges"] is True
    assert result.exit_code == 0
