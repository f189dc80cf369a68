"""cpu.int8: the CPU profile, the exact graph rewrites, and no float islands around YOLO-style blocks."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deployc.compiler.contracts import Context
from deployc.compiler.instruments import Instruments
from deployc.compiler.manager import run_pass
from deployc.core.ort import session
from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.passes.cpu_int8 import (
    CpuInt8,
    CpuInt8Config,
    detect,
    pad_conv_input_channels,
    quantizer_settings,
    runtime_float_islands,
    spatial_means_to_global_pool,
)
from deployc.passes.export import export_onnx
from deployc.passes.quantize import Int8Config, quantize_int8
from deployc.passes.simplify import simplify_proto


class ConvSiLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.SiLU())


class YoloBlock(nn.Module):
    """The ops YOLOv8 quantizes: 3-channel stem, SiLU, Split-free C2f-style Concat, MaxPool (SPPF), nearest
    Resize, residual Add, and a global mean with keepdim (how torch exports a classifier head)."""

    def __init__(self):
        super().__init__()
        self.stem = ConvSiLU(3, 16, 2)
        self.a, self.b = ConvSiLU(16, 16), ConvSiLU(16, 16)
        self.fuse = ConvSiLU(32, 32)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.down = ConvSiLU(32, 32, 2)
        self.head = nn.Conv2d(32, 8, 1)
        self.classify = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        s = self.stem(x)
        y = self.fuse(torch.cat([self.a(s), self.b(s)], 1))
        up = nn.functional.interpolate(self.down(self.pool(y)), scale_factor=2.0, mode="nearest")
        return self.classify(self.head(up + y).mean((2, 3), keepdim=True))


@pytest.fixture(scope="module")
def int8_block():
    torch.manual_seed(0)
    model = YoloBlock().eval()
    state = ModelState(module=model, inputs=(TensorSpec("images", ("batch", 3, 32, 32)),), facts=frozenset({"torch"}))
    fp32 = simplify_proto(export_onnx(model, state))
    rng = np.random.default_rng(0)
    calib = Dataset({"images": rng.uniform(0, 1, (32, 3, 32, 32)).astype(np.float32)}, None, "uniform")
    probe = rng.uniform(0, 1, (4, 3, 32, 32)).astype(np.float32)
    # quantized as the onnx target does for this CPU: without VNNI, 7-bit weights keep AVX2's 16-bit pair sums from
    # saturating, which is what makes the channel padding exact on every x86 CPU
    return state, quantize_int8(fp32, calib, Int8Config(samples=32, **quantizer_settings("auto"))), probe


def _runtime_ops(proto) -> collections.Counter:
    """Op types of the graph onnxruntime actually runs (extended optimizations: the QDQ fusions)."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = f"{d}/opt.onnx"
        ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(f"{d}/opt.onnx").graph.node)


@pytest.mark.parametrize(
    ("flags", "machine", "name", "reduce_range", "pad"),
    [
        ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", "x86-vnni", False, True),
        ({"avx2", "avx_vnni"}, "x86_64", "x86-vnni", False, True),
        ({"avx2", "avx512f"}, "x86_64", "x86-avx2", True, True),  # VPMADDUBSW can saturate: 7-bit weights
        ({"asimd", "asimddp"}, "aarch64", "arm64", False, False),
        (set(), "riscv64", "portable", False, False),
    ],
)
def test_the_profile_follows_the_cpu_flags(flags, machine, name, reduce_range, pad):
    chosen = detect(flags, machine)
    assert (chosen.name, chosen.reduce_range, chosen.pad_conv_channels) == (name, reduce_range, pad)
    assert f"reduce_range {'on' if reduce_range else 'off'}" in chosen.describe()


def test_named_profiles_set_the_quantizer(monkeypatch):
    assert quantizer_settings("x86-avx2") == {"reduce_range": True}
    assert quantizer_settings("x86-vnni") == {"reduce_range": False}


def test_rewrites_are_exact_and_leave_no_float_islands(int8_block):
    _, int8, probe = int8_block
    assert [op for op, _ in runtime_float_islands(int8)] == ["ReduceMean"]  # the one island before tuning
    pooled, pools = spatial_means_to_global_pool(int8)
    tuned, padded = pad_conv_input_channels(pooled)
    assert len(pools) == 1 and len(padded) == 1  # the global mean; the 3-channel stem
    onnx.checker.check_model(tuned)
    assert runtime_float_islands(tuned) == []
    before = session(int8).run(None, {"images": probe})[0]
    after = session(tuned).run(None, {"images": probe})[0]
    np.testing.assert_array_equal(after, before)  # zero weights on a zero-point channel: the same integers
    ops = _runtime_ops(tuned)
    assert ops["QLinearConv"] == 7 and ops["Conv"] == 0
    assert ops["QLinearSigmoid"] == ops["QLinearMul"] == 5  # SiLU in integers, no float Sigmoid/Mul left
    assert ops["QLinearConcat"] == 1 and ops["QLinearAdd"] == 1 and ops["QLinearGlobalAveragePool"] == 1
    assert ops["Sigmoid"] == ops["Mul"] == ops["ReduceMean"] == 0
    # MaxPool and Resize run on the uint8 tensor: one Q at the input, one DQ at the output, none in between
    assert ops["MaxPool"] == ops["Resize"] == ops["QuantizeLinear"] == ops["DequantizeLinear"] == 1
    stem = next(n for n in tuned.graph.node if n.op_type == "Pad")
    assert [d for i in tuned.graph.initializer if i.name == stem.input[1] for d in onnx.numpy_helper.to_array(i)] == [
        0,
        0,
        0,
        0,
        0,
        1,
        0,
        0,
    ]


def test_channels_already_a_multiple_of_four_are_left_alone(int8_block):
    _, int8, _ = int8_block
    once, padded = pad_conv_input_channels(int8)
    again, padded_again = pad_conv_input_channels(once)
    assert padded and padded_again == [] and again is once


def test_the_pass_reports_what_it_did_and_the_portable_profile_pads_nothing(int8_block, tmp_path):
    state, int8, _ = int8_block
    ctx = Context(None, None, None, None, tmp_path, Instruments(quiet=True))
    quantized = state.replace(onnx=int8, facts=state.facts | {"onnx", "quantized"})
    tuned = run_pass(CpuInt8(CpuInt8Config(cpu="x86-vnni")), quantized, ctx)
    assert tuned.history[-1].metrics == {"means_to_global_pool": 1, "convs_padded": 1, "float_islands": 0}
    portable = run_pass(CpuInt8(CpuInt8Config(cpu="portable")), quantized, ctx)
    assert portable.history[-1].metrics == {"means_to_global_pool": 1, "convs_padded": 0, "float_islands": 0}
