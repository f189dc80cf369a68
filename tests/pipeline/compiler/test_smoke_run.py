"""Issue 24: the smoke run uses real samples (the first validation batch), zeros only where no data exists; a failure
names the sample and the layer and says it is the user's model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployc.core.config import load_config
from deployc.driver.build import build
from deployc.errors import UsageError
from deployc.validation.preflight import preflight
from tests.conftest import write

TOKEN_MODEL = """
import torch
from torch import nn


class LastToken(nn.Module):
    \"\"\"Padding-aware: reads the hidden state of each sequence's last real token (ids are 0-padded at the end).\"\"\"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 8, padding_idx=0)
        self.fc = nn.Linear(8, 4)

    def forward(self, ids):
        h = self.emb(ids)
        last = (ids != 0).sum(1) - 1  # -1 for an all-padding row: never in real data
        idx = last.view(-1, 1, 1).expand(-1, 1, h.shape[2])
        return self.fc(torch.gather(h, 1, idx).squeeze(1))


def make():
    return LastToken()
"""


def _tokens(n: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (n, 6))
    for row, length in zip(ids, rng.integers(2, 7, n)):
        row[length:] = 0
    return ids.astype(np.int64)


def _config(tmp_path: Path, data: str = "tokens.npz") -> dict:
    return {
        "name": "tok",
        "model": {"factory": "tok.py:make", "inputs": [{"name": "ids", "shape": ["batch", 6], "dtype": "int64"}]},
        "data": {"validation": data, "metric": "cosine"},
        "targets": {"onnx": {"precision": ["fp32"]}},
        "validate": {"latency_runs": 1},
    }


def test_padding_aware_model_is_accepted(tmp_path: Path):
    """Example 4: the all-zero smoke run gathered at index -1 and refused the model (exit 2) though it scores on the
    real data; validate-config and build now run it on the first validation batch."""
    write(tmp_path / "tok.py", TOKEN_MODEL)
    np.savez(tmp_path / "tokens.npz", ids=_tokens())
    config = load_config(_config(tmp_path), base_dir=tmp_path)
    preflight(config)
    result = build(config, out=tmp_path / "out", quiet=True)
    assert result.exit_code == 0
    assert result.manifest["artifacts"][0]["gate"]["status"] == "pass"


def test_failure_on_a_real_sample_names_sample_and_layer(tmp_path: Path):
    """Own case: one bad sample (an id past the vocabulary) is named with the layer, as the user's model's failure."""
    write(tmp_path / "tok.py", TOKEN_MODEL)
    ids = _tokens()
    ids[1, 0] = 77  # vocabulary is 50
    np.savez(tmp_path / "bad.npz", ids=ids)
    config = load_config(_config(tmp_path, "bad.npz"), base_dir=tmp_path)
    with pytest.raises(UsageError) as err:
        preflight(config)
    text = str(err.value)
    assert text.startswith(
        "model: your model, as loaded and before any deployc pass, fails on data.validation (bad.npz) sample 1 "
        "in layer 'emb' (Embedding) at layer <top-level LastToken>, "
    )
    assert "tok.py:16: h = self.emb(ids): IndexError: index out of range in self" in text
    assert "token ids < vocabulary" in text
