"""Issue 11, driver side: metrics that hold on degenerate outputs, per-output figures, int8 coverage shown and
gated, honest proxy status, and third-party noise kept out of the terminal."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest

from deployc.cli import main, print_table
from deployc.compiler.loader import load_model
from deployc.compiler.registry import get_target
from deployc.core.config import ValidateConfig, load_config
from deployc.data.metrics import BUILTIN, cosine_rows, get_metric
from deployc.data.reference import compute_reference, matches_reference
from deployc.data.sources import load_dataset
from deployc.driver.build import BuildResult
from deployc.outputs.junit import render_junit
from deployc.outputs.report import render_report, report_view
from deployc.outputs.report_html import render_html
from deployc.validation.gate import coverage_gate, validate_artifact
from tests.conftest import digits_config, write


def test_cosine_is_stable_on_near_zero_rows():
    """Per-sample cosine of two 1e-7-sized vectors is noise; rows below the output's scale are scored by distance."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((40, 256)) * 1e-7  # most maps are near zero...
    ref[:4] = rng.standard_normal((4, 256))  # ...a few hold real detections
    exact = ref + rng.standard_normal(ref.shape) * 4e-8  # an fp32 artifact: rounding errors far below the scale
    naive = (exact * ref).sum(1) / (np.linalg.norm(exact, axis=1) * np.linalg.norm(ref, axis=1))
    assert naive.min() < 0.999  # what failed the opset-12 text detector's fp32 artifact
    assert cosine_rows(exact, ref).min() > 0.999999
    broken = ref.copy()
    broken[10:20] = 0.5  # near-zero maps turned into garbage: caught
    assert cosine_rows(broken, ref)[10:20].max() < 0.2


def test_similarity_metrics_cover_every_output_and_keep_the_worst():
    a, b = np.ones((8, 4)), np.ones((8, 3))
    assert BUILTIN["cosine"].fn([a, -b], [a, b]) == pytest.approx(-1.0)  # the broken second output decides
    assert BUILTIN["mse"].fn([a, b + 2], [a, b]) == pytest.approx(4.0)


def test_exact_outputs_match_within_fp32_rounding_and_int8_like_do_not():
    ref = [np.linspace(-3, 3, 600, dtype=np.float32).reshape(20, 30)]
    from deployc.data.reference import Reference

    reference = Reference(ref, BUILTIN["cosine"], 1.0, ref[0], ["y"], [0])
    assert matches_reference([ref[0] * (1 + 3e-7)], reference)
    assert not matches_reference([np.round(ref[0] * 40) / 40], reference)  # int8-like rounding


@pytest.fixture(scope="module")
def int8_setup(demo_build: BuildResult):
    config = load_config(digits_config(targets={"onnx": {"precision": ["fp32", "int8"]}}))
    state = load_model(config)
    data = load_dataset(config.data.validation, config, state.inputs, "validation")
    reference = compute_reference(state, data, get_metric(config), 64)
    target_cls = get_target("onnx")
    return target_cls(target_cls.Options()), data, reference


def _int8_artifact(demo_build: BuildResult, coverage: dict | None):
    art = copy.deepcopy(next(a for a in demo_build.artifacts if a.precision == "int8"))
    art.details = dict(art.details, int8_coverage=coverage) if coverage else dict(art.details)
    art.details.pop("warnings", None)
    return art


def test_min_int8_coverage_fails_the_gate_naming_the_float_ops(demo_build: BuildResult, int8_setup):
    target, data, reference = int8_setup
    low = {"macs": 0.23, "weights": 0.4, "float_ops": {"LSTM": 1, "Gemm": 2}}
    art = _int8_artifact(demo_build, low)
    validate_artifact(target, art, data, reference, ValidateConfig(min_int8_coverage=0.5, latency_runs=1), 64)
    assert art.gate["status"] == "fail"
    assert art.gate["reason"] == (
        "int8 coverage 23% of MACs is below validate.min_int8_coverage 50% (float ops: Gemm×2, LSTM×1)"
    )
    assert art.details["warnings"] == ["onnx/int8 runs only 23% of its MACs in int8; float ops: Gemm×2, LSTM×1"]
    high = _int8_artifact(demo_build, {"macs": None, "weights": 0.97, "float_ops": {}})
    validate_artifact(target, high, data, reference, ValidateConfig(min_int8_coverage=0.5, latency_runs=1), 64)
    assert high.gate["status"] == "pass" and "warnings" not in high.details
    assert coverage_gate(_int8_artifact(demo_build, None), 0.5) is None  # not measured: no gate, shown as '—'


def test_int8_column_in_every_report(demo_build: BuildResult):
    manifest = copy.deepcopy(demo_build.manifest)
    int8 = next(a for a in manifest["artifacts"] if a["precision"] == "int8")
    int8["details"]["int8_coverage"] = {"macs": 0.23, "weights": 0.4, "float_ops": {"LSTM": 1}}
    view = report_view(manifest, demo_build.timings)
    md = render_report(view)
    assert "| target | precision | size | top1 | int8 | drift |" in md
    assert "| onnx | int8 |" in md and " 23% " in md and "| onnx | fp32 |" in md and " — |" in md
    html = render_html(view)
    assert "<th>int8</th>" in html and ">23%<" in html
    table = io.StringIO()
    print_table(BuildResult(demo_build.out_dir, manifest, [], demo_build.timings), table)
    assert "int8" in table.getvalue() and "23%" in table.getvalue()


def test_proxy_artifact_never_reads_as_a_plain_pass(demo_build: BuildResult):
    manifest = copy.deepcopy(demo_build.manifest)
    art = manifest["artifacts"][0]
    art.update(target="tensorrt", runtime="onnxruntime (TensorRT proxy)")
    art["details"]["engine"] = "not built (no CUDA GPU visible)"
    view = report_view(manifest, demo_build.timings)
    text = "pass (proxy: onnxruntime, engine not built)"
    table = io.StringIO()
    print_table(BuildResult(demo_build.out_dir, manifest, [], demo_build.timings), table)
    assert text in table.getvalue() and text in render_report(view) and text in render_html(view)
    junit = render_junit(manifest, demo_build.timings)
    assert 'name="tensorrt/fp32 (proxy: onnxruntime)"' in junit
    assert 'name="tensorrt/fp32 engine"' in junit and 'message="engine not built (no CUDA GPU visible)"' in junit


def test_manifest_says_which_outputs_the_metric_reads(demo_build: BuildResult):
    ref = demo_build.manifest["reference"]
    assert ref["outputs"] == ["output_0"] and ref["metric_outputs"] == ["output_0"]
    assert demo_build.manifest["budget"]["drift_units"] == "top1"
    assert set(demo_build.manifest["artifacts"][0]["metrics"]["outputs"]) == {"output_0"}


NOISY = """
import logging, os, sys, warnings
import torch
from torch import nn

def make():
    logging.warning("Axis 1 is out-of-range for weight 'conv_BN.weight' with rank 1")
    warnings.warn("pytree deprecation noise", UserWarning)
    os.write(2, b"E0000 XNNPACK: failed to load the shared object\\n")
    print("ai-edge-quantizer calibration 100%|######|", file=sys.stderr)
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
"""


@pytest.mark.parametrize("debug", [False, True])
def test_third_party_noise_stays_out_of_the_terminal_unless_debug(tmp_path: Path, capfd, debug: bool):
    write(tmp_path / "noisy.py", NOISY)
    cfg = digits_config(model={"factory": "noisy.py:make", "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8]}]})
    cfg["validate"]["max_drift"] = 1.0
    cfg["data"]["skip_checks"] = ["chance"]  # an untrained model
    path = write(tmp_path / "c.yaml", json.dumps(cfg))
    capfd.readouterr()
    code = main(["build", str(path), "--out", str(tmp_path / "out")] + (["--debug"] if debug else []))
    err = capfd.readouterr().err
    assert code == 0, err
    assert "reference top1 = " in err and "onnx/fp32: pass" in err  # deployc's own lines always show
    for noise in ("XNNPACK", "calibration 100%"):
        assert (noise in err) == debug, f"{noise!r} {'missing' if debug else 'leaked'}"
    if not debug:  # with --debug, pytest's own log and warning capture take the root record and the warning
        assert "Axis 1 is out-of-range" not in err and "pytree deprecation" not in err
