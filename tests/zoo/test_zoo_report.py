"""The zoo's table never shows a stand-in runtime's milliseconds as a target's latency (the TensorRT rows run on
onnxruntime here: their figures said nothing about a GPU, yet read like one)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from zoo_lib import report


def test_proxy_rows_carry_no_latency(tmp_path):
    build = tmp_path / "m" / "build"
    build.mkdir(parents=True)
    arts = [
        {"target": "onnx", "precision": "fp32", "runtime": "onnxruntime", "gate": {"status": "pass"}},
        {"target": "onnx", "precision": "int8", "runtime": "onnxruntime", "gate": {"status": "pass"}},
        {
            "target": "tensorrt",
            "precision": "fp32",
            "runtime": "onnxruntime (TensorRT proxy)",
            "gate": {"status": "pass"},
        },
        {
            "target": "tensorrt",
            "precision": "int8",
            "runtime": "onnxruntime (TensorRT proxy)",
            "gate": {"status": "pass"},
        },
    ]
    (build / "manifest.json").write_text(json.dumps({"artifacts": arts}))
    ms = {"onnx/fp32": 10.0, "onnx/int8": 4.0, "tensorrt/fp32": 9.0, "tensorrt/int8": 590.0}
    timings = {"artifacts": {k: {"latency_ms_batch1": v} for k, v in ms.items()}}
    (build / "timings.json").write_text(json.dumps(timings))
    rows = report.rows_for("m", {"exit_code": 0}, tmp_path)
    by = {f"{r['target']}/{r['precision']}": r for r in rows}
    assert by["onnx/int8"]["latency_ms"] == 4.0 and by["onnx/int8"]["latency_ratio"] == 0.4
    assert by["tensorrt/int8"]["latency_ms"] is None and by["tensorrt/int8"]["latency_ratio"] is None
    table = report.render([], rows, [])
    trt = [line for line in table.splitlines() if line.startswith("| m | tensorrt | int8")][0]
    assert "590" not in trt and "no target latency" in trt
