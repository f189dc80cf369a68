"""A runtime row ('int8@openvino': the onnx target's int8 file for OpenVINO) is held to the same int8 gates as the
target's own 'int8' row: the coverage floor and warning, and the latency check against fp32 on the same runtime."""

from __future__ import annotations

from deployc.compiler.contracts import Artifact
from deployc.validation.gate import coverage_gate, coverage_warning
from deployc.validation.gates import latency_gate


def _art(precision: str, ms: float, share: float = 0.3) -> Artifact:
    return Artifact(
        "onnx",
        precision,
        None,
        "openvino" if "@" in precision else "onnxruntime",
        "",
        details={"int8_coverage": {"macs": share, "float_ops": {"Conv": 3}}},
        perf={"latency_ms_batch1": ms},
        gate={"status": "pass"},
    )


def test_the_openvino_int8_row_meets_the_coverage_floor_and_warning():
    row = _art("int8@openvino", 1.0)
    assert row.kind == "int8" and row.row == "@openvino"
    assert coverage_gate(row, 0.8)["status"] == "fail"
    assert "onnx/int8@openvino runs only 30% of its MACs in int8" in coverage_warning(row)
    assert coverage_gate(_art("fp32@openvino", 1.0), 0.8) is None


def test_latency_is_compared_with_fp32_on_the_same_runtime():
    # int8 on onnxruntime beats its fp32; int8@openvino is slower than fp32@openvino, though faster than ORT's fp32
    arts = [_art("fp32", 10.0), _art("int8", 5.0), _art("fp32@openvino", 4.0), _art("int8@openvino", 6.0)]
    warnings = latency_gate(arts, "fail")
    assert len(warnings) == 1 and "onnx/int8@openvino" in warnings[0]
    assert [a.gate["status"] for a in arts] == ["pass", "pass", "pass", "fail"]
