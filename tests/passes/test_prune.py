"""prune.magnitude / prune.structured / prune.gradual on digits-trained residual and concat models:
structure changes as asked, the pruned model exports and runs in onnxruntime, accuracy recovers."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from deployc.compiler.contracts import Context, Pass, PassResult
from deployc.compiler.instruments import Instruments
from deployc.compiler.manager import run_pass
from deployc.core.config import load_config
from deployc.core.ort import session
from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.errors import UsageError
from deployc.examples.models import DigitsConcatNet
from deployc.passes.export import ExportCheck, ExportError, export_onnx
from deployc.passes.model_stats import params_and_macs
from deployc.passes.prune import MagnitudeConfig, PruneMagnitude, PruneStructured, StructuredConfig
from deployc.passes.prune_gradual import GradualConfig, PruneGradual
from tests.conftest import digits_config

X_TEST, Y_TEST = digits_arrays("test")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Five developers share two cores: one torch thread per test process avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_ctx(tmp_path, check_export: bool = False) -> Context:
    x, y = digits_arrays("train")
    train = Dataset({"image": x}, y, "digits:train")
    return Context(
        config=load_config(digits_config()),
        train=train,
        calibration=train,
        validation=Dataset({"image": X_TEST}, Y_TEST, "digits:test"),
        work_dir=tmp_path,
        instruments=Instruments(quiet=True, extra=[ExportCheck()] if check_export else []),
    )


def state_of(module: nn.Module) -> ModelState:
    return ModelState(
        module=module.eval(),
        inputs=(TensorSpec("image", ("batch", 1, 8, 8)),),
        facts=frozenset({"torch", "data.train"}),
    )


def top1(module: nn.Module) -> float:
    with torch.no_grad():
        return float((module(torch.from_numpy(X_TEST)).argmax(1).numpy() == Y_TEST).mean())


def onnx_session(module: nn.Module) -> tuple[onnx.ModelProto, ort.InferenceSession]:
    proto = export_onnx(module, state_of(module))
    onnx.checker.check_model(proto)
    return proto, session(proto)


def conv_out_channels(proto: onnx.ModelProto) -> list[int]:
    inits = {i.name: i for i in proto.graph.initializer}
    return [int(inits[n.input[1]].dims[0]) for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in inits]


@pytest.fixture(scope="module")
def concat_model() -> nn.Module:
    """DigitsConcatNet trained briefly on digits (concat of three branches)."""
    from deployc.passes.training import TrainConfig, fit

    torch.manual_seed(0)
    model = DigitsConcatNet()
    x, y = digits_arrays("train")
    fit(model, Dataset({"image": x}, y, "digits:train"), TrainConfig(epochs=4, lr=5e-3, holdout=0), None, ["image"])
    return model.eval()


@pytest.mark.parametrize("which", ["residual", "concat"])
def test_structured_prunes_channels_and_exports(which, digits_model, concat_model, tmp_path):
    model = digits_model if which == "residual" else concat_model
    state = run_pass(
        PruneStructured(StructuredConfig(ratio=0.5, measure_onnx=False)), state_of(model), make_ctx(tmp_path)
    )
    pruned, record = state.module, state.history[-1]
    assert record.modified and state.onnx is None and "pruned" in state.facts
    assert record.metrics["macs_ratio"] < 0.35  # both in- and out-channels halve
    assert pruned.fc.out_features == 10  # the classifier's outputs are never pruned
    assert params_and_macs(model, state)[1] == record.metrics["macs_before"]  # the input model is untouched
    proto, sess = onnx_session(pruned)
    before = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    after = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert sorted(conv_out_channels(proto)) == sorted(after)  # the ONNX graph carries the reduced channel counts
    assert all(a == b // 2 for a, b in zip(after, before))
    got = sess.run(None, {"image": X_TEST[:32]})[0]
    want = pruned(torch.from_numpy(X_TEST[:32])).detach().numpy()
    assert got.shape == (32, 10) and np.abs(got - want).max() < 1e-4
    titles = [t.title for t in record.tables]
    assert "prune.structured: output channels per layer" in titles


def test_structured_round_to_global_taylor(digits_model, tmp_path):
    cfg = StructuredConfig(ratio=0.4, round_to=4, scope="global", importance="taylor", measure_onnx=False)
    pruned = run_pass(PruneStructured(cfg), state_of(digits_model), make_ctx(tmp_path)).module
    convs = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(c % 4 == 0 for c in convs) and sum(convs) < sum(
        m.out_channels for m in digits_model.modules() if isinstance(m, nn.Conv2d)
    )


def test_depthwise_model_prunes_consistently(tmp_path):
    from deployc.examples.models import DigitsMobileNet

    torch.manual_seed(0)
    state = run_pass(
        PruneStructured(StructuredConfig(ratio=0.5, measure_onnx=False)),
        state_of(DigitsMobileNet()),
        make_ctx(tmp_path),
    )
    for m in state.module.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels  # depthwise stays depthwise
    assert onnx_session(state.module)[1].run(None, {"image": X_TEST[:4]})[0].shape == (4, 10)


class _TinyEncoder(nn.Module):
    """Linear embedding, one multi-head self-attention with a residual add, a feed-forward, a classifier."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.ff = nn.Linear(32, 64)
        self.head = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(torch.relu(self.ff(h)).mean(1))


def test_attention_embed_dim_pruned_per_head_and_exports(tmp_path):
    torch.manual_seed(0)
    model = _TinyEncoder().eval()
    state = ModelState(module=model, inputs=(TensorSpec("x", ("batch", 6, 8)),), facts=frozenset({"torch"}))
    pruned = run_pass(
        PruneStructured(StructuredConfig(ratio=0.5, measure_onnx=False)), state, make_ctx(tmp_path)
    ).module
    attn = pruned.attn
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (16, 4, 4) and pruned.head.out_features == 5
    x = np.random.default_rng(0).standard_normal((3, 6, 8)).astype(np.float32)
    sess = session(export_onnx(pruned, state))
    assert np.abs(sess.run(None, {"x": x})[0] - pruned(torch.from_numpy(x)).detach().numpy()).max() < 1e-4


def test_unknown_ignored_layer_names_key_and_suggests(digits_model, tmp_path):
    with pytest.raises(
        UsageError, match=r"prune\.structured\.ignore\[0\]: no layer named 'layer2.conv9'.*did you mean"
    ):
        run_pass(
            PruneStructured(StructuredConfig(ignore=["layer2.conv9"], measure_onnx=False)),
            state_of(digits_model),
            make_ctx(tmp_path),
        )


def test_ignored_layers_keep_their_channels(digits_model, tmp_path):
    cfg = StructuredConfig(ratio=0.5, ignore=["stem.0"], measure_onnx=False)
    pruned = run_pass(PruneStructured(cfg), state_of(digits_model), make_ctx(tmp_path)).module
    assert pruned.stem[0].out_channels == 16 and pruned.layer2.conv1.out_channels == 16


def test_magnitude_80_percent_zeros_in_exported_onnx(digits_model, tmp_path):
    """Done-when: 80% sparsity → 80% zeros in the exported ONNX weights; masks are permanent."""
    state = run_pass(PruneMagnitude(MagnitudeConfig(sparsity=0.8)), state_of(digits_model), make_ctx(tmp_path))
    pruned, m = state.module, state.history[-1].metrics
    assert not any(
        n.endswith(("_orig", "_mask")) for n, _ in list(pruned.named_parameters()) + list(pruned.named_buffers())
    )
    assert not any(mod._forward_pre_hooks for mod in pruned.modules())
    proto, sess = onnx_session(pruned)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    weights = [
        inits[n.input[1]] for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits
    ]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert abs(zeros - 0.8) < 0.01 and abs(m["sparsity"] - 0.8) < 0.01
    assert m["onnx_zip_bytes_after"] < 0.6 * m["onnx_zip_bytes_before"]  # zeros compress
    assert m["onnx_bytes_after"] > 0.9 * m["onnx_bytes_before"]  # …but the raw file stays dense
    per_layer = state.history[-1].tables[0].to_json()
    assert {r[0] for r in per_layer["rows"]} >= {"stem.0", "layer1.conv1", "fc"}
    got = sess.run(None, {"image": X_TEST[:16]})[0]
    assert np.abs(got - pruned(torch.from_numpy(X_TEST[:16])).detach().numpy()).max() < 1e-4


def test_magnitude_per_layer_skip(digits_model, tmp_path):
    cfg = MagnitudeConfig(sparsity=0.5, scope="layer", skip=["fc", "stem"], measure_onnx=False)
    pruned = run_pass(PruneMagnitude(cfg), state_of(digits_model), make_ctx(tmp_path)).module
    assert int((pruned.fc.weight == 0).sum()) == 0 and int((pruned.stem[0].weight == 0).sum()) == 0
    for conv in (pruned.layer1.conv1, pruned.layer2.conv2):
        assert abs(float((conv.weight == 0).float().mean()) - 0.5) < 0.01


def test_gradual_weights_reaches_target_on_schedule(digits_model, tmp_path):
    cfg = GradualConfig(sparsity=0.7, epochs=3, ramp_epochs=2, lr=1e-3, measure_onnx=False)
    state = run_pass(PruneGradual(cfg), state_of(digits_model), make_ctx(tmp_path))
    m = state.history[-1].metrics
    rows = state.history[-1].tables[0].rows
    assert [r[0] for r in rows] == [0, 1, 2]
    targets = [float(r[1]) for r in rows]
    assert targets[0] == 0 and 0 < targets[1] < 0.7 and targets[2] == pytest.approx(0.7)
    assert targets[1] > 0.7 / 2  # cubic: most of the pruning happens early
    assert [float(r[2]) for r in rows] == pytest.approx(targets, abs=0.005)
    assert m["reached_target"] and m["nonzero_after"] < 0.4 * m["nonzero_before"]
    assert not any(mod._forward_pre_hooks for mod in state.module.modules())
    assert top1(state.module) > 0.9


def test_gradual_channels_on_concat(concat_model, tmp_path):
    cfg = GradualConfig(
        mode="channels", sparsity=0.5, epochs=2, ramp_epochs=2, schedule="linear", lr=2e-3, measure_onnx=False
    )
    state = run_pass(PruneGradual(cfg), state_of(concat_model), make_ctx(tmp_path))
    rows = state.history[-1].tables[0].rows
    assert [float(r[1]) for r in rows] == pytest.approx([0, 0.25, 0.5])
    assert float(rows[-1][2]) == pytest.approx(0.5, abs=0.05)
    assert onnx_session(state.module)[1].run(None, {"image": X_TEST[:4]})[0].shape == (4, 10)


class _Airy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.airy_ai(x)


class _BreaksExport(Pass):
    """A torch-level pass whose result no longer exports (swaps the stem's activation)."""

    name = "test.breaks_export"
    Config = MagnitudeConfig
    requires = frozenset({"torch"})
    invalidates = frozenset({"onnx"})

    def run(self, state, ctx):
        module = copy.deepcopy(state.module)
        module.stem[2] = _Airy()
        return PassResult(state.replace(module=module, onnx=None), True)


def test_export_check_names_pass_and_layer(digits_model, tmp_path):
    with pytest.raises(ExportError) as exc:
        run_pass(_BreaksExport(MagnitudeConfig()), state_of(digits_model), make_ctx(tmp_path, check_export=True))
    msg = str(exc.value)
    assert "after pass 'test.breaks_export'" in msg and "stem.2 (_Airy)" in msg
