"""tflite int8 of a BERT-style block: the transformer recipe (static int8 FCs, GELU-fed FCs dynamic-range,
embedding weight-only, the rest float) within a stated cosine of fp32, its float ops reported, and smoothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployc.driver.build import build

TOKENS = """
import numpy as np
from tests.tiny_bert import TinyBert, token_arrays


def make():
    return TinyBert().eval()


def tokens():
    return [(token_arrays(48), None)]


def calib():
    return [(token_arrays(48, seed=1), None)]
"""


def _build(tmp_path: Path, **quantize: float) -> dict:
    (tmp_path / "bert.py").write_text(TOKENS)
    spec = [{"name": n, "shape": ["batch", 16], "dtype": "int64"} for n in ("input_ids", "attention_mask")]
    config = {
        "name": "bert",
        "model": {"factory": f"{tmp_path}/bert.py:make", "inputs": spec},
        "data": {
            "validation": f"{tmp_path}/bert.py:tokens",
            "calibration": f"{tmp_path}/bert.py:calib",
            "metric": "cosine",
        },
        "targets": {"tflite": {"precision": ["int8"]}},
        "quantize": {"samples": 48, **quantize},
        "validate": {"max_drift": 0.02, "latency_runs": 2},
    }
    result = build(config, out=tmp_path / "out", quiet=True)
    assert result.exit_code == 0, [a["gate"] for a in result.manifest["artifacts"]]
    return result.manifest["artifacts"][0]


@pytest.fixture(autouse=True)
def _importable_tests(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))


def test_transformer_int8_recipe_keeps_attention_float_and_stays_close(tmp_path):
    art = _build(tmp_path)
    assert art["metrics"]["drift"] < 0.01  # the all-op static recipe: 0.46 on MiniLM
    ops = art["details"]["ops"]
    floats = set(art["details"]["npu"]["float_op_types"])  # every float op counted (float_ops lists the first 64)
    assert {"SOFTMAX", "BATCH_MATMUL"} <= floats and not art["details"]["npu"]["integer_only"]
    assert "FULLY_CONNECTED" in floats  # the one FC that reads GELU is dynamic-range (float in, float out)
    assert art["details"]["int8_coverage"]["macs"] > 0.8  # FCs int8 (dynamic-range too); attention BATCH_MATMULs float
    assert art["details"]["io_dtype"] == "float32" and ops["FULLY_CONNECTED"] == 6
    assert any("transformer graph (1 attention blocks)" in n for n in art["details"]["notes"])


def test_smoothing_reaches_the_tflite_int8(tmp_path):
    art = _build(tmp_path, smoothing=0.5)
    assert art["details"]["smoothing"] == {"alpha": 0.5, "linear_layers": 6}
    assert art["details"]["ops"]["MUL"] > 0 and art["metrics"]["drift"] < 0.01
    floats = art["details"]["npu"]["float_op_types"]
    assert "FULLY_CONNECTED" in floats  # the GELU-fed FC is still found behind its smoothing MUL
    assert np.isfinite(art["metrics"]["drift"])
