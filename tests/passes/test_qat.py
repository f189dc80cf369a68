"""qat: PT2E fake-quant fine-tuning with the shared training loop, exported as QDQ ONNX with the
ranges QAT learned, checked against the converted torch graph and the fp32 model on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployc.compiler.contracts import Context
from deployc.compiler.instruments import Instruments
from deployc.compiler.manager import run_pass
from deployc.core.config import load_config
from deployc.core.ort import session
from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.errors import UsageError
from deployc.passes.export import export_onnx
from deployc.passes.onnx_util import op_counts
from deployc.passes.qat import Qat, QatConfig
from deployc.targets.onnx import quantize_for
from tests.conftest import digits_config


@pytest.fixture(scope="module")
def qat_run(digits_model, tmp_path_factory):
    x, y = digits_arrays("train")
    train = Dataset({"image": x}, y, "digits:train")
    ctx = Context(
        load_config(digits_config()), train, train, None, tmp_path_factory.mktemp("qat"), Instruments(quiet=True)
    )
    state = ModelState(
        module=digits_model, inputs=(TensorSpec("image", ("batch", 1, 8, 8)),), facts=frozenset({"torch", "data.train"})
    )
    out = run_pass(Qat(QatConfig(epochs=1)), state, ctx)
    return out, ctx, export_onnx(out.module, out)


def test_qat_exports_qdq_with_the_learned_ranges(qat_run):
    state, _, proto = qat_run
    counts = op_counts(proto)
    metrics = state.history[-1].metrics
    assert {"qat", "precision:int8"} <= state.facts and state.onnx is None
    assert counts["QuantizeLinear"] == metrics["activation_ranges"] >= 6  # one per learned activation range
    assert counts["DequantizeLinear"] > counts["QuantizeLinear"]  # plus the int8 weights
    assert "BatchNormalization" not in counts  # folded before fake quant
    int8_weights = [i for i in proto.graph.initializer if i.data_type == 3 and len(i.dims) == 4]
    assert len(int8_weights) == counts["Conv"]
    table = state.history[-1].tables[0]
    scales = [float(r[1]) for r in table.rows]
    assert all(s > 0 for s in scales) and len(set(scales)) > 1


def test_qat_onnx_matches_the_converted_graph_and_keeps_accuracy(qat_run, digits_model):
    state, _, proto = qat_run
    x, y = digits_arrays("test")
    # Q/DQ as written (no fusion into onnxruntime's CPU int8 kernels, which saturate on x86 without VNNI):
    # the graph's own numbers, which the exporter must keep equal to torch's fake-quant model
    got = session(proto, optimize=False).run(None, {"image": x})[0]
    with torch.no_grad():
        want = state.module(torch.from_numpy(x)).numpy()
        fp32 = digits_model(torch.from_numpy(x)).numpy()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    assert np.abs(got - want).max() < 0.25 * np.abs(want).max()
    assert (got.argmax(1) == y).mean() >= (fp32.argmax(1) == y).mean() - 0.01


def test_onnx_target_emits_the_qat_graph_as_int8(qat_run):
    state, ctx, proto = qat_run
    lowered = state.replace(onnx=proto)
    assert quantize_for("int8", lowered, ctx) is lowered  # no second (ONNX) calibration
    with pytest.raises(UsageError, match="after the qat pass"):
        quantize_for("fp16", lowered, ctx)
