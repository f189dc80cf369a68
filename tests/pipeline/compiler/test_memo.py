"""Within one build, a pass run with the same input and config runs once, also with the pass cache off:
the onnx and tensorrt targets share export, simplify and fp16; passes whose configs differ still run apart."""

from __future__ import annotations

import onnx

from deployc.driver.build import build
from tests.conftest import digits_config


def test_targets_share_identical_pass_runs_and_nothing_else(tmp_path):
    config = digits_config(
        targets={"onnx": {"precision": ["fp32", "fp16", "int8"]}, "tensorrt": {"precision": ["fp32", "fp16", "int8"]}}
    )
    result = build(config, out=tmp_path / "out", quiet=True, cache=False)
    runs = result.timings["artifact_passes"]
    ran = {label: {p["name"]: p["cached"] for p in passes} for label, passes in runs.items()}
    assert ran["onnx/fp32"] == {"export.onnx": False, "simplify": False}  # the first user runs them
    assert ran["tensorrt/fp32"] == {"export.onnx": True, "simplify": True}  # the second reuses them
    assert ran["onnx/fp16"]["quantize.fp16"] is False and ran["tensorrt/fp16"]["quantize.fp16"] is True
    # int8 differs per target (asymmetric uint8 for onnxruntime, symmetric int8 by TensorRT's placement): both run
    assert ran["onnx/int8"]["quantize.int8"] is False and ran["tensorrt/int8"]["tensorrt.int8"] is False
    assert result.timings["cache"]["memo_hits"] == 3 and result.timings["cache"]["hits"] == 0
    sha = {f"{a['target']}/{a['precision']}": a["sha256"] for a in result.manifest["artifacts"]}
    graphs = {k: onnx.load(str(result.out_dir / a["path"])).graph for k, a in by_label(result).items()}
    assert graphs["onnx/fp16"] == graphs["tensorrt/fp16"]  # the very graph, shared (metadata names the target)
    assert sha["onnx/int8"] != sha["tensorrt/int8"]
    # a memo hit replays the record of the run it reuses: manifest.json cannot tell them apart
    passes = {f"{a['target']}/{a['precision']}": a["passes"] for a in result.manifest["artifacts"]}
    assert passes["tensorrt/fp32"] == passes["onnx/fp32"]


def by_label(result) -> dict:
    return {f"{a['target']}/{a['precision']}": a for a in result.manifest["artifacts"]}
