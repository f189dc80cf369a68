"""A dynamic-quantized artifact computes its activation scales over the whole batch, so its outputs depend on the
samples beside it; validation runs it one sample at a time, so its verdict does not move with the memory budget
or data.batch_size (resemblyzer's onnx/dynamic went from pass to fail when the budget's guard resized batches)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from deployc.data.sources import digits_arrays
from deployc.driver.build import build
from tests.conftest import digits_config, write

MLP = """
import torch
from torch import nn

from deployc.data.sources import digits_arrays


def make():
    # an MLP (all MatMul: what dynamic quantization covers), trained in about a second so the gate has a real model
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    x, y = (torch.from_numpy(a) for a in digits_arrays("train"))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with torch.enable_grad():  # deployc calls factories under no_grad
        for _ in range(60):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()
"""


@pytest.fixture(scope="module")
def dynamic_build(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("dyn")
    factory = write(folder / "mlp.py", MLP)
    config = digits_config(
        targets={"onnx": {"precision": ["dynamic"]}}, validate={"max_drift": 0.05, "latency_runs": 1}
    )
    config["model"] = {**config["model"], "factory": f"{factory}:make"}
    return build(config, out=folder / "out", quiet=True), factory


def test_dynamic_artifact_is_validated_one_sample_at_a_time(dynamic_build):
    import importlib.util

    import torch

    result, factory = dynamic_build
    art = next(a for a in result.manifest["artifacts"] if a["precision"] == "dynamic")
    assert art["gate"]["status"] == "pass", art["gate"]
    x, _ = digits_arrays("test")
    assert art["metrics"]["samples"] == len(x)
    sess = ort.InferenceSession(str(result.out_dir / art["path"]), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    one = np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    batched = np.concatenate([sess.run(None, {name: x[i : i + 64]})[0] for i in range(0, len(x), 64)])
    spec = importlib.util.spec_from_file_location("mlp", factory)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with torch.no_grad():
        ref = module.make()(torch.from_numpy(x)).numpy()
    per_sample, in_batches = float(np.abs(one - ref).max()), float(np.abs(batched - ref).max())
    assert abs(per_sample - in_batches) > 1e-4  # the artifact really depends on its batch: the check can fail
    assert art["metrics"]["max_abs_err"] == pytest.approx(per_sample, abs=1e-5)
