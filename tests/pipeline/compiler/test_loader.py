"""Model inputs: factory + safetensors / state_dict weights, .pt2, .onnx; pickles refused by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deployc.compiler.loader import load_model
from deployc.core.config import load_config
from deployc.errors import UsageError
from tests.conftest import DIGITS_INPUT


def _cfg(tmp_path: Path, **model) -> object:
    return load_config(
        {"model": {"inputs": DIGITS_INPUT, **model}, "data": {"validation": "digits"}}, base_dir=tmp_path
    )


def test_factory_with_safetensors_weights(tmp_path: Path, tiny_factory: Path):
    from tests.conftest import write

    ref = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(256, 10)
    )
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    state = load_model(_cfg(tmp_path, factory="tiny.py:make", weights="w.safetensors"))
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(state.module(x), ref(x)) and state.facts == {"torch"}
    write(tmp_path / "bad.safetensors", "not a safetensors file")
    with pytest.raises(UsageError, match=r"model.weights: '.*bad.safetensors' is not a readable safetensors"):
        load_model(_cfg(tmp_path, factory="tiny.py:make", weights="bad.safetensors"))


def test_state_dict_weights_only_and_shape_mismatch(tmp_path: Path, tiny_factory: Path):
    sd = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(256, 10)
    ).state_dict()
    torch.save(sd, tmp_path / "w.pt")
    assert load_model(_cfg(tmp_path, factory="tiny.py:make", weights="w.pt")).module is not None
    sd["3.weight"] = torch.zeros(10, 255)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(UsageError, match=r"layer '3.weight' has shape \[10, 255\], the model expects \[10, 256\]"):
        load_model(_cfg(tmp_path, factory="tiny.py:make", weights="bad.pt"))


def test_pickled_model_refused_unless_allowed(tmp_path: Path):
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), tmp_path / "whole.pt")
    with pytest.raises(UsageError, match=r"holds pickled Python objects.*allow_pickle: true"):
        load_model(_cfg(tmp_path, weights="whole.pt"))
    state = load_model(_cfg(tmp_path, weights="whole.pt", allow_pickle=True))
    assert state.module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_nan_weights_named(tmp_path: Path, tiny_factory: Path):
    sd = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(256, 10)
    ).state_dict()
    sd["0.bias"][1] = float("nan")
    save_file(sd, str(tmp_path / "nan.safetensors"))
    with pytest.raises(UsageError, match="parameter '0.bias' contains NaN"):
        load_model(_cfg(tmp_path, factory="tiny.py:make", weights="nan.safetensors"))


def test_factory_errors_are_usage_errors(tmp_path: Path):
    from tests.conftest import write

    write(tmp_path / "m.py", "def boom():\n    raise RuntimeError('no GPU here')\n\ndef notmodule():\n    return 3\n")
    with pytest.raises(UsageError, match=r"model.factory: 'm.py:boom' raised RuntimeError: no GPU here"):
        load_model(_cfg(tmp_path, factory="m.py:boom"))
    with pytest.raises(UsageError, match="returned int, not a torch.nn.Module"):
        load_model(_cfg(tmp_path, factory="m.py:notmodule"))
    with pytest.raises(UsageError, match="'nothere' is not a callable"):
        load_model(_cfg(tmp_path, factory="m.py:nothere"))


def test_wrong_input_spec_named(tmp_path: Path, tiny_factory: Path):
    cfg = load_config(
        {
            "model": {"factory": "tiny.py:make", "inputs": [{"name": "image", "shape": ["batch", 3, 8, 8]}]},
            "data": {"validation": "digits"},
        },
        base_dir=tmp_path,
    )
    with pytest.raises(UsageError, match=r"model.inputs: the model does not accept inputs image\['batch', 3, 8, 8\]"):
        load_model(cfg)


def test_exported_pt2(tmp_path: Path, digits_model):
    ep = torch.export.export(digits_model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    cfg = load_config({"model": {"exported": "m.pt2"}, "data": {"validation": "digits"}}, base_dir=tmp_path)
    state = load_model(cfg)
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(state.module(x), digits_model(x), atol=1e-6)
    assert state.inputs[0].shape == ("batch", 1, 8, 8)
    (tmp_path / "trunc.pt2").write_bytes((tmp_path / "m.pt2").read_bytes()[:500])
    cfg = load_config(
        {"model": {"exported": "trunc.pt2", "inputs": DIGITS_INPUT}, "data": {"validation": "digits"}},
        base_dir=tmp_path,
    )
    with pytest.raises(UsageError, match=r"model.exported: '.*trunc.pt2' is not a readable torch.export"):
        load_model(cfg)


def test_onnx_model_and_corrupt_onnx(tmp_path: Path, digits_onnx: Path):
    state = load_model(load_config({"model": {"onnx": str(digits_onnx)}, "data": {"validation": "digits"}}))
    assert state.facts == {"onnx"} and state.inputs[0].name == "image" and state.inputs[0].shape[0] == "batch"
    (tmp_path / "bad.onnx").write_bytes(digits_onnx.read_bytes()[:1000])
    with pytest.raises(UsageError, match=r"model.onnx: '.*bad.onnx' is not a valid ONNX model"):
        load_model(load_config({"model": {"onnx": "bad.onnx"}, "data": {"validation": "digits"}}, base_dir=tmp_path))


def test_onnx_only_model_builds_and_validates(tmp_path: Path, digits_onnx: Path):
    from deployc.driver.build import build

    result = build(
        {
            "name": "from-onnx",
            "model": {"onnx": str(digits_onnx)},
            "data": {"validation": "digits:test"},
            "targets": {"onnx": {"precision": ["fp32", "int8"]}},
            "validate": {"latency_runs": 2},
        },
        out=tmp_path / "out",
        quiet=True,
    )
    arts = {a["precision"]: a for a in result.manifest["artifacts"]}
    assert arts["fp32"]["metrics"]["max_abs_err"] < 1e-5
    assert arts["int8"]["metrics"]["drift"] <= 0.01 and result.exit_code == 0
    np.testing.assert_array_equal(result.manifest["reference"]["value"], arts["fp32"]["metrics"]["metric"])
