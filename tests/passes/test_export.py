"""export.onnx: torch ↔ onnxruntime numerics, dynamic batch, and failures that name op and layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deployc.core.ort import session
from deployc.core.state import ModelState, TensorSpec
from deployc.data.sources import digits_arrays
from deployc.passes.export import ExportError, export_onnx

DIGITS = ModelState(inputs=(TensorSpec("image", ("batch", 1, 8, 8)),))


def test_digits_cnn_numerics_and_dynamic_batch(digits_model):
    proto = export_onnx(digits_model, DIGITS)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = session(proto)
    x = digits_arrays("test")[0]
    for n in (1, 7, 450):
        got = sess.run(None, {"image": x[:n]})[0]
        want = digits_model(torch.from_numpy(x[:n])).detach().numpy()
        assert got.shape == (n, 10)
        assert np.abs(got - want).max() <= 1e-4


class _Airy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.airy_ai(x)


class _Unexportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = _Airy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def test_unsupported_op_names_op_and_layer():
    with pytest.raises(ExportError) as exc:
        export_onnx(_Unexportable().eval(), DIGITS)
    msg = str(exc.value)
    assert "at op aten.special_airy_ai" in msg and "in layer act (_Airy)" in msg
    assert "\x1b[" not in msg and len(msg) < 500
