"""SmoothQuant on ONNX: the fp32 graph keeps its outputs, the division folds where it can, int8 error drops."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deployc.core.ort import session
from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.passes.export import export_onnx
from deployc.passes.onnx_util import op_counts
from deployc.passes.quantize import Int8Config, quantize_int8
from deployc.passes.simplify import SimplifyConfig, simplify_stages
from deployc.passes.smoothquant import MUL_SUFFIX, smooth, smoothable
from tests.tiny_bert import SEQ, TinyBert, token_arrays, token_dataset

INPUTS = tuple(TensorSpec(n, ("batch", SEQ), "int64") for n in ("input_ids", "attention_mask"))


def _proto(**kwargs: bool) -> onnx.ModelProto:
    proto = export_onnx(TinyBert(**kwargs).eval(), ModelState(inputs=INPUTS))
    simplified, _ = simplify_stages(proto, SimplifyConfig(), token_arrays(2))
    return simplified


@pytest.fixture(scope="module")
def bert() -> onnx.ModelProto:
    return _proto()


def _out(proto: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return session(proto).run(None, feeds)[0]


def test_smoothing_keeps_the_fp32_outputs_and_adds_one_mul_per_activation(bert):
    smoothed, done = smooth(bert, token_dataset(32), alpha=0.8)
    onnx.checker.check_model(smoothed)
    groups = smoothable(bert)
    assert done.groups == len(groups) >= 4  # q/k/v share one input; o, ff1, ff2 one each
    assert done.muls == done.groups and not done.folded  # every LayerNorm output also feeds a residual add
    assert op_counts(smoothed)["Mul"] == op_counts(bert)["Mul"] + done.muls
    assert sum(n.name.endswith(MUL_SUFFIX) for n in smoothed.graph.node) == done.muls
    feeds = token_arrays(16, seed=1)
    ref, got = _out(bert, feeds), _out(smoothed, feeds)
    assert np.max(np.abs(ref - got)) <= 1e-4 * np.max(np.abs(ref))


def test_a_layernorm_read_only_by_linears_absorbs_the_division():
    proto = _proto(pre_norm_head=True)
    smoothed, done = smooth(proto, token_dataset(32), alpha=0.5)
    assert done.folded == {"LayerNormalization": 1}
    assert done.muls == done.groups - 1
    feeds = token_arrays(8, seed=2)
    ref, got = _out(proto, feeds), _out(smoothed, feeds)
    assert np.max(np.abs(ref - got)) <= 1e-4 * np.max(np.abs(ref))


class NormLinear(nn.Module):
    """LayerNorm → Linear with four outlier channels (30× scale, read by 30× smaller weights)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.ln, self.fc = nn.LayerNorm(64), nn.Linear(64, 64)
        with torch.no_grad():
            self.ln.weight[:4] *= 30.0
            self.fc.weight[:, :4] /= 30.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ln(x))


def test_smoothing_lowers_the_int8_error_of_outlier_channels():
    proto = export_onnx(NormLinear().eval(), ModelState(inputs=(TensorSpec("x", ("batch", 8, 64)),)))
    rng = np.random.default_rng(0)
    calib = Dataset({"x": rng.standard_normal((64, 8, 64)).astype(np.float32)}, None, "noise")
    feeds = {"x": rng.standard_normal((64, 8, 64)).astype(np.float32)}
    ref = _out(proto, feeds)

    def error(smoothing: float | None) -> float:
        got = _out(quantize_int8(proto, calib, Int8Config(symmetric_activations=True, smoothing=smoothing)), feeds)
        return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))

    plain, smoothed = error(None), error(0.8)  # measured 0.236 and 0.110
    assert smoothed < 0.6 * plain, (plain, smoothed)


def test_smoothing_is_off_by_default_and_bounded():
    assert Int8Config().smoothing is None
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            Int8Config(smoothing=bad)
