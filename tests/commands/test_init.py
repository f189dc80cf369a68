"""deployc init: inspects a model and a data file and writes a commented config that validates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from deployc.cli import main
from tests.conftest import write
from tests.tiny_mobile import tiny_project


@pytest.fixture
def project(tmp_path: Path, monkeypatch, tiny_weights: bytes) -> Path:
    monkeypatch.chdir(tmp_path)
    return tiny_project(tmp_path, tiny_weights, 64)


def test_init_writes_a_commented_config_that_validates(project, capsys):
    argv = ["init", "--model", "nets/tiny.py:make", "--weights", "nets/tiny.safetensors", "--data", "digits.npz"]
    argv += ["--target", "onnx:int8", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["error"] is None and summary["class"] == "TinyMobile" and summary["outputs"] == [[2, 10]]
    text = (project / "deployc.yaml").read_text()
    assert "# model:" in text and "# data:" in text and "TinyMobile" in text  # what it inspected, as comments
    assert "10 scores per sample for 10 label classes: top1 fits" in text
    raw = yaml.safe_load(text)
    assert raw["model"]["inputs"] == [{"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert raw["data"]["metric"] == "top1" and raw["targets"] == {"onnx": {"precision": ["int8"]}}
    assert main(["validate-config", "deployc.yaml", "--quiet"]) == 0


def test_init_never_replaces_a_file_and_checks_the_metric_against_the_model(project, capsys):
    write(project / "deployc.yaml", "mine: true\n")
    assert main(["init", "--model", "nets/tiny.py:make", "--data", "digits.npz"]) == 2
    assert "never replaces a file" in capsys.readouterr().err
    assert (project / "deployc.yaml").read_text() == "mine: true\n"
    from deployc.data.sources import digits_arrays

    x, _ = digits_arrays("test")
    np.savez(project / "many.npz", image=x[:40], labels=np.arange(40) % 40)  # 40 classes, 10 scores per sample
    assert main(["init", "--model", "nets/tiny.py:make", "--data", "many.npz", "--config", "other.yaml"]) == 2
    assert "the labels hold 40 classes but the model's first output has 10" in capsys.readouterr().err
    assert not (project / "other.yaml").exists()
