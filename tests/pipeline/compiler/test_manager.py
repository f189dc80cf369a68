"""The whole pipeline is checked before anything runs; errors name the pass, key and passes before it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from deployc.cli import main
from deployc.compiler.pipeline_string import format_pipeline, parse_pipeline
from deployc.driver.build import build, check
from deployc.errors import PipelineError, UsageError
from tests.conftest import digits_config, write


def test_unmet_requirement_rejected_before_running(tmp_path: Path):
    """simplify needs an ONNX graph; with a torch model it must come after export.onnx."""
    cfg = digits_config(passes=[{"simplify": {}}, {"export.onnx": {}}])
    t0 = time.perf_counter()
    with pytest.raises(PipelineError) as exc:
        build(cfg, out=tmp_path / "out", quiet=True)
    assert time.perf_counter() - t0 < 2.0  # failed at check time, not after loading and exporting
    assert "pass 'simplify'" in str(exc.value) and "put 'export.onnx' before it" in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_onnx_model_refuses_torch_pass(tmp_path: Path, digits_onnx: Path, capsys):
    cfg = {
        "model": {"onnx": str(digits_onnx)},
        "data": {"validation": "digits:test"},
        "passes": [{"simplify": {}}, {"export.onnx": {}}],
    }
    path = write(tmp_path / "c.yaml", json.dumps(cfg))
    assert main(["build", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pass 'export.onnx' (after: simplify)" in err and "ONNX-only model" in err
    assert not (tmp_path / "out").exists()


def test_unknown_pass_suggests_name():
    with pytest.raises(PipelineError, match=r"unknown pass 'simplfy' \(did you mean 'simplify'\?\)"):
        check(digits_config(passes=[{"export.onnx": {}}, {"simplfy": {}}]))


def test_pass_option_typo_names_pass_and_key():
    with pytest.raises(PipelineError) as exc:
        check(digits_config(passes=[{"export.onnx": {"opste": 18}}]))
    assert "passes[0].export.onnx.opste: unknown key (did you mean 'opset'?)" in str(exc.value)


def test_target_option_typo_and_unknown_target():
    with pytest.raises(PipelineError, match=r"targets.onnx.precison: unknown key \(did you mean 'precision'\?\)"):
        check(digits_config(targets={"onnx": {"precison": ["int8"]}}))
    with pytest.raises(PipelineError, match=r"unknown target 'onx' \(did you mean 'onnx'\?\)"):
        check(digits_config(targets={"onx": {}}))


def test_int8_without_calibration_data_rejected(tmp_path: Path):
    write(
        tmp_path / "data.py",
        """
        import numpy as np
        def samples():
            for i in range(4):
                yield np.zeros((1, 1, 8, 8), np.float32), np.array([i])
    """,
    )
    cfg = digits_config(data={"validation": "data.py:samples"}, targets={"onnx": {"precision": ["int8"]}})
    cfg["base_dir"] = tmp_path
    with pytest.raises(PipelineError, match="calibration data"):
        check(cfg)


def test_missing_validation_data_is_usage_error():
    with pytest.raises(UsageError, match="data.validation"):
        check(digits_config(data={"metric": "top1"}))


def test_pipeline_string_round_trips():
    steps = [
        ("prune.structured", {"ratio": 0.5, "importance": "l1"}),
        ("finetune", {"epochs": 3, "lr": 0.001}),
        ("onnx", {"precision": ["fp32", "int8"], "note": "a, b|c"}),
        ("tflite", {}),
    ]
    text = format_pipeline(steps)
    assert text.startswith("prune.structured{ratio=0.5,importance=l1} | finetune{epochs=3,lr=0.001} | onnx{")
    assert parse_pipeline(text) == steps


def test_canonical_string_comes_from_resolved_config():
    _, manager = check(
        digits_config(
            passes=[{"export.onnx": {"opset": 18}}, {"simplify": {"rewrite": False}}],
            targets={"onnx": {"precision": ["fp32", "dynamic"], "threads": 1}},
        )
    )
    assert (
        manager.pipeline_string() == "export.onnx | simplify{rewrite=false} | onnx{precision=[fp32,dynamic],threads=1}"
    )
