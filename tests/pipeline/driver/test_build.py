"""End-to-end builds: artifacts, manifest truth, gates and every exit code."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from deployc.cli import main
from deployc.storage.files import file_digest as sha256
from tests.conftest import digits_config, write


def test_fp32_artifact_matches_torch(demo_build):
    fp32 = next(a for a in demo_build.manifest["artifacts"] if a["precision"] == "fp32")
    assert fp32["metrics"]["max_abs_err"] <= 1e-4
    assert fp32["metrics"]["agreement"] == 1.0
    assert fp32["gate"]["status"] == "pass"


def test_int8_drift_within_one_percent(demo_build):
    int8 = next(a for a in demo_build.manifest["artifacts"] if a["precision"] == "int8")
    assert int8["metrics"]["drift"] <= 0.01
    assert int8["metrics"]["metric_ref"] >= 0.97  # the reference model really is trained
    ops = int8["details"]["ops"]
    assert ops.get("QuantizeLinear", 0) >= 1 and ops.get("DequantizeLinear", 0) >= 3
    assert int8["bytes"] < 0.5 * next(a["bytes"] for a in demo_build.manifest["artifacts"] if a["precision"] == "fp32")


def test_manifest_hashes_and_sizes_match_files(demo_build):
    on_disk = json.loads((demo_build.out_dir / "manifest.json").read_text())
    assert on_disk["status"] == "passed" and demo_build.exit_code == 0
    assert len(on_disk["artifacts"]) == 2
    for art in on_disk["artifacts"]:
        path = demo_build.out_dir / art["path"]
        assert sha256(path) == art["sha256"]
        assert path.stat().st_size == art["bytes"]
        onnx.checker.check_model(str(path))
    assert on_disk["pipeline"] == "onnx{precision=[fp32,int8]}"
    assert {"torch", "onnx", "onnxruntime"} <= set(on_disk["versions"])
    assert not list(demo_build.out_dir.glob(".staging-*"))


def test_manifest_records_int8_input_quantization(demo_build):
    int8 = next(a for a in demo_build.manifest["artifacts"] if a["precision"] == "int8")
    q = int8["inputs"][0]["quantization"]
    assert int8["inputs"][0]["name"] == "image" and int8["inputs"][0]["shape"][0] == "batch"
    assert q["scale"] > 0 and q["dtype"] == "uint8"


def test_report_lists_every_artifact(demo_build):
    report = (demo_build.out_dir / "report.md").read_text()
    assert "| onnx | fp32 |" in report and "| onnx | int8 |" in report
    assert "onnx{precision=[fp32,int8]}" in report


def test_gate_failure_exits_3(tmp_path: Path):
    cfg = digits_config(
        data={"validation": "digits:test", "calibration": "digits:train", "metric": "mse"},
        targets={"onnx": {"precision": ["int8"]}},
        validate={"max_drift": 0.0, "latency_runs": 1},
    )
    path = write(tmp_path / "c.yaml", json.dumps(cfg))
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 3
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    gate = manifest["artifacts"][0]["gate"]
    assert gate["status"] == "fail" and "exceeds budget" in gate["reason"]
    assert (tmp_path / "out" / manifest["artifacts"][0]["path"]).is_file()


def test_config_typo_exits_2_naming_key(tmp_path: Path, capsys):
    cfg = digits_config(validate={"max_drfit": 0.01})
    path = write(tmp_path / "c.yaml", json.dumps(cfg))
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "validate.max_drfit: unknown key (did you mean 'max_drift'?)" in err
    assert str(path) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_metric_that_raises_exits_2_naming_it(tmp_path: Path, capsys):
    """A metric callable that crashes on the reference is the user's to fix: exit 2 naming data.metric."""
    write(
        tmp_path / "metric.py",
        """
        def broken(outputs, labels):
            raise ZeroDivisionError("boom")
    """,
    )
    cfg = digits_config(data={"validation": "digits:test", "metric": "metric.py:broken"})
    path = write(tmp_path / "c.yaml", json.dumps(cfg))
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "data.metric: 'metric.py:broken' raised on the reference: ZeroDivisionError: boom" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_internal_error_exits_1(tmp_path: Path, capsys):
    """A pass that crashes is a bug in the pass: exit 1 naming it, no traceback."""
    from pydantic import BaseModel

    from deployc.compiler.contracts import Pass
    from deployc.compiler.registry import register_pass

    class CrashConfig(BaseModel):
        pass

    class Crash(Pass):
        name = "test.crash"
        Config = CrashConfig
        requires = frozenset({"onnx"})

        def run(self, state, ctx):
            raise ZeroDivisionError("boom")

    register_pass(Crash)
    cfg = digits_config(passes=[{"export.onnx": {}}, {"test.crash": {}}])
    path = write(tmp_path / "c.yaml", json.dumps(cfg))
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "internal error: pass 'test.crash' (after: export.onnx): ZeroDivisionError: boom" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_json_summary_on_stdout(tmp_path: Path, capsys):
    path = write(tmp_path / "c.yaml", json.dumps(digits_config()))
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "passed" and summary["artifacts"][0]["target"] == "onnx"


def test_validate_config_and_version(tmp_path: Path, capsys):
    path = write(tmp_path / "c.yaml", json.dumps(digits_config()))
    assert main(["validate-config", str(path)]) == 0
    assert "pipeline: onnx" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0


def test_custom_metric_is_named_by_its_callable_in_gate_reasons(tmp_path: Path):
    """A metric given as '/abs/path/metrics.py:accuracy' reads 'accuracy' in gate reasons and junit (no machine
    path in what a person reads); the manifest's config keeps the string the user wrote."""
    write(
        tmp_path / "metrics.py",
        """
        import numpy as np

        def accuracy(outputs, labels):
            return float((outputs[0].argmax(1) == labels).mean())
    """,
    )
    metric = f"{tmp_path / 'metrics.py'}:accuracy"
    cfg = digits_config(data={"validation": "digits:test", "metric": metric})
    cfg["targets"] = {"onnx": {"precision": ["fp32"]}}
    path = write(tmp_path / "c.yaml", json.dumps(cfg))
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (artifact,) = manifest["artifacts"]
    assert "accuracy drift +0 (budget" in artifact["gate"]["reason"] and str(tmp_path) not in artifact["gate"]["reason"]
    assert manifest["config"]["data"]["metric"] == metric
