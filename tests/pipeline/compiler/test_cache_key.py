"""Issue 24: the pass cache is keyed on what defines the module: the source of its classes, not only repr + weights."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from deployc.compiler.pass_cache import module_digest
from deployc.core.config import load_config
from deployc.core.pyimport import import_callable, user_modules
from deployc.driver.build import build
from tests.conftest import DIGITS_INPUT, write

NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1)){edit}


def make():
    return Net()
"""


def _forget_user_modules() -> None:
    """What a new process sees: the edited file imported again (deployc keeps imported factories per process)."""
    for module in user_modules():
        del sys.modules[module.__name__]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEPLOYC_CACHE_DIR", str(tmp_path / "cache"))  # a disk cache of its own, on
    write(tmp_path / "net.py", NET.format(edit=""))
    return tmp_path


def _config(project: Path):
    return load_config(
        {
            "name": "net",
            "model": {"factory": "net.py:make", "inputs": DIGITS_INPUT},
            "data": {"validation": "digits:test", "metric": "cosine"},
            "targets": {"onnx": {"precision": ["fp32"]}},
            "validate": {"latency_runs": 1},
        },
        base_dir=project,
    )


def test_forward_edit_re_exports(project: Path):
    """Example 3: forward() gains a .relu(); the cache key (repr + state_dict) did not change, deployc shipped the old
    graph byte for byte, and the exact fp32 artifact failed its gate against the new reference."""
    first = build(_config(project), out=project / "out1", quiet=True)
    assert first.exit_code == 0
    write(project / "net.py", NET.format(edit=".relu()"))
    _forget_user_modules()
    second = build(_config(project), out=project / "out2", quiet=True)
    art = second.manifest["artifacts"][0]
    assert second.exit_code == 0, art["gate"]
    assert art["sha256"] != first.manifest["artifacts"][0]["sha256"]
    export = [p for p in second.timings["artifact_passes"]["onnx/fp32"] if p["name"] == "export.onnx"]
    assert export and not export[0]["cached"]
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    out = ort.InferenceSession(str(project / "out2" / art["path"])).run(None, {"image": x})[0]
    assert out.min() >= 0.0  # the relu is in the shipped graph
    third = build(_config(project), out=project / "out3", quiet=True)  # nothing changed: the cache still serves
    export = [p for p in third.timings["artifact_passes"]["onnx/fp32"] if p["name"] == "export.onnx"]
    assert export[0]["cached"] and third.manifest["artifacts"][0]["sha256"] == art["sha256"]


def test_module_digest_covers_class_source_and_neighbours(project: Path):
    """A helper in a neighbouring file that forward() calls is part of the key too (like the up-to-date key's)."""
    make = import_callable("net.py:make", project, "model.factory")
    before = module_digest(make())
    assert module_digest(make()) == before  # deterministic
    write(project / "helpers.py", "SCALE = 2\n")
    _forget_user_modules()
    assert module_digest(import_callable("net.py:make", project, "model.factory")()) != before
