"""distill: losses, student derivation, and real builds — the digits CNN into a half-size student, and
all-MiniLM-L6-v2 into a 3-layer student exported to ONNX and validated against the teacher."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deployc.compiler.contracts import Context
from deployc.compiler.instruments import Instruments
from deployc.compiler.loader import load_model
from deployc.compiler.manager import run_pass
from deployc.core.config import load_config
from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.driver.build import build
from deployc.errors import UsageError
from deployc.passes.distill import Distill, DistillConfig
from deployc.passes.distill_losses import (
    FeatureHints,
    embedding_loss,
    knowledge_distillation_loss,
    make_adapter,
    soft_target_loss,
)
from deployc.passes.student import StudentConfig, channel_reduced, count_params, layer_dropped, make_student
from tests.conftest import digits_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models train several times faster on one thread than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_soft_target_loss_is_t2_scaled_kl():
    s, t = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[0.2, 3.0, 1.0]])
    temp = 3.0
    p, q = torch.softmax(t / temp, -1), torch.softmax(s / temp, -1)
    expected = float((p * (p.log() - q.log())).sum()) * temp**2
    assert math.isclose(float(soft_target_loss(s, t, temp)), expected, rel_tol=1e-5)
    assert float(soft_target_loss(t, t, temp)) == pytest.approx(0.0, abs=1e-7)


def test_alpha_zero_is_plain_cross_entropy():
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    got = knowledge_distillation_loss(s, t, y, 4.0, 0.0)
    assert float(got) == pytest.approx(float(nn.functional.cross_entropy(s, y)), rel=1e-6)


def test_embedding_loss_measures_angle_not_length():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(embedding_loss(a, 5 * a)) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_loss(a, a.flip(1))) == pytest.approx(1.0, abs=1e-6)  # orthogonal rows


def test_adapters_map_student_width_to_teacher_width():
    conv = make_adapter(torch.zeros(2, 12, 4, 4), torch.zeros(2, 32, 4, 4), "hint")
    assert (
        isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and (conv.in_channels, conv.out_channels) == (12, 32)
    )
    lin = make_adapter(torch.zeros(2, 7, 96), torch.zeros(2, 7, 384), "hint")
    assert isinstance(lin, nn.Linear) and lin.weight.shape == (384, 96)
    assert isinstance(make_adapter(torch.zeros(2, 7, 384), torch.zeros(2, 7, 384), "hint"), nn.Identity)
    with pytest.raises(UsageError, match="spatial sizes differ"):
        make_adapter(torch.zeros(2, 12, 8, 8), torch.zeros(2, 32, 4, 4), "distill.hints[0] (layer1 → layer2)")


def test_feature_hints_train_the_adapter_and_name_missing_layers(digits_model):
    student = make_student(
        StudentConfig(factory="deployc.examples.models:DigitsResNet", kwargs={"width": 8}), digits_model, (), EXAMPLES
    )[0]
    hints = FeatureHints(student, digits_model, [("layer2", "layer2", 1.0)], "mse")
    x = torch.rand(4, 1, 8, 8)
    student(x)
    digits_model(x)
    params = hints.build_adapters()
    assert [tuple(p.shape) for p in params] == [(32, 16, 1, 1)]  # student width 16 → teacher 32 at layer2
    hints.loss().backward()
    assert params[0].grad is not None and float(params[0].grad.abs().sum()) > 0
    hints.remove()
    with pytest.raises(UsageError, match=r"hints\[0\]\.teacher: no layer 'layer9'"):
        FeatureHints(student, digits_model, [("layer2", "layer9", 1.0)], "mse")


class _Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(6))

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def test_layer_drop_keeps_every_other_layer_with_teacher_weights():
    torch.manual_seed(0)
    teacher = _Stack()
    student, facts = layer_dropped(teacher, None, None)
    assert facts == {"layers_path": "layers", "teacher_layers": 6, "kept_layers": [0, 2, 4]}
    assert len(student.layers) == 3 and len(teacher.layers) == 6  # the teacher is untouched
    for i, j in enumerate([0, 2, 4]):
        assert torch.equal(student.layers[i].weight, teacher.layers[j].weight)
    assert student.layers[0].weight.data_ptr() != teacher.layers[0].weight.data_ptr()
    assert student(torch.zeros(2, 4)).shape == (2, 8)
    with pytest.raises(UsageError, match="keep_layers"):
        layer_dropped(teacher, [1, 7], None)


def test_channel_reduction_meets_the_param_budget(digits_model):
    student, facts = channel_reduced(digits_model, (torch.zeros(2, 1, 8, 8),), 0.5, [])
    assert count_params(student) <= 0.5 * count_params(digits_model)
    assert student.fc.out_features == 10 and student.stem[0].in_channels == 1  # model interface kept
    assert student(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert 0 < facts["channel_ratio"] < 1


def test_config_rejects_both_factory_and_derive():
    with pytest.raises(ValueError, match="not both"):
        StudentConfig(factory="deployc.examples.models:DigitsResNet", derive="channels")


def _digits_ctx(tmp_path, labelled: bool = True) -> tuple[Context, object]:
    config = load_config(digits_config())
    x, y = digits_arrays("train")
    train = Dataset({"image": x[:300]}, y[:300] if labelled else None, "digits:train[:300]")
    state = load_model(config)
    return Context(config, train, None, None, tmp_path, Instruments(quiet=True)), state.replace(
        facts=state.facts | {"data.train"}
    )


def test_configured_teacher_and_factory_student(tmp_path):
    ctx, state = _digits_ctx(tmp_path)
    untrained = state.replace(module=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))  # the teacher comes from config
    cfg = DistillConfig(
        teacher={"factory": "deployc.examples.digits_cnn:pretrained"},
        epochs=2,
        lr=0.003,
        measure_latency=False,
        student={"factory": "deployc.examples.models:DigitsResNet", "kwargs": {"width": 8}},
    )
    out = run_pass(Distill(cfg), untrained, ctx)
    m = out.history[-1].metrics
    assert type(out.module).__name__ == "DigitsResNet" and out.module.fc.in_features == 16
    assert (
        m["teacher_params"] == count_params(state.module)
        and m["student"] == "factory deployc.examples.models:DigitsResNet"
    )
    assert m["holdout_metric_teacher"] >= 0.95  # the configured (trained) teacher, not the untrained model passed in
    assert "distilled" in out.facts and out.onnx is None


def test_hard_label_mix_needs_labels(tmp_path):
    ctx, state = _digits_ctx(tmp_path, labelled=False)
    with pytest.raises(UsageError, match="distill.alpha: 0.5 mixes in hard labels"):
        run_pass(Distill(DistillConfig(alpha=0.5, epochs=1, measure_latency=False)), state, ctx)


def test_cnn_distills_into_half_size_student(tmp_path):
    cfg = digits_config(
        data={"train": "digits:train", "validation": "digits:test", "calibration": "digits:train", "metric": "top1"},
        passes=[
            {
                "distill": {
                    "student": {"derive": "channels", "params_ratio": 0.45},
                    "alpha": 0.7,
                    "temperature": 4.0,
                    "hints": [{"student": "layer2", "teacher": "layer2", "weight": 0.5}],
                    "epochs": 4,
                    "lr": 0.003,
                    "measure_latency": False,
                }
            }
        ],
        targets={"onnx": {"precision": ["fp32", "int8"]}},
        validate={"max_drift": 0.04, "latency_runs": 3},
    )
    result = build(cfg, out=tmp_path / "out", quiet=True)
    record = next(p for p in result.manifest["passes"] if p["name"] == "distill")
    m = record["metrics"]
    assert m["student_params"] <= 0.5 * m["teacher_params"] and m["adapters"] is True
    assert m["holdout_metric_student"] >= 0.9  # a real classifier after 4 epochs, on samples fit() never trained on
    arts = {a["precision"]: a for a in result.manifest["artifacts"]}
    assert arts["fp32"]["metrics"]["metric_ref"] >= 0.97  # the reference is the teacher as loaded
    assert arts["fp32"]["metrics"]["max_abs_err"] > 1e-3  # ...so the student's outputs really differ from it
    assert all(a["gate"]["status"] == "pass" and a["metrics"]["metric"] >= 0.94 for a in arts.values())
    report = (result.out_dir / "report.md").read_text()
    assert "## distill: teacher vs student" in report and f"| student | {m['student_params']:,} |" in report


def test_minilm_teacher_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from deployc.examples import minilm

    texts = [
        "The match statement is used for pattern matching.",
        "Keys and values are iterated over in insertion order.",
        "A dictionary keeps its keys in the order they were inserted.",
    ]
    x = minilm.tokenize(texts)
    with torch.no_grad():
        ours = minilm.teacher()(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"])).numpy()
    ref = SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ours[1] @ ours[2] > ours[0] @ ours[2] + 0.2  # paraphrases sit closer than unrelated sentences


def test_minilm_split_is_disjoint_and_metrics_are_sane():
    from deployc.examples import minilm

    train = {s for s in minilm.sentences() if not minilm.is_heldout(s)}
    held = {s for s in minilm.sentences() if minilm.is_heldout(s)}
    assert not train & held and len(held) > 200 and len(train) > 4 * len(held) * 0.8
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 8))
    assert minilm.pairwise_spearman([emb], emb) == pytest.approx(1.0)
    assert minilm.embedding_cosine([emb], emb) == pytest.approx(1.0)
    assert minilm.pairwise_spearman([rng.normal(size=(20, 8))], emb) < 0.5
    assert minilm.pairwise_spearman.needs_labels is False and minilm.embedding_cosine.higher_is_better is True


def test_minilm_three_layer_student_builds_to_onnx(tmp_path):
    import json

    import onnx

    out = tmp_path / "minilm"
    result = build(EXAMPLES / "distill_minilm_small.yaml", out=out, quiet=True)
    m = next(p for p in result.manifest["passes"] if p["name"] == "distill")["metrics"]
    assert m["kept_layers"] == [0, 2, 4] and m["teacher_layers"] == 6
    assert (
        m["student_params"] < m["teacher_params"] and m["frozen_params"] == (30522 + 512 + 2 + 2) * 384
    )  # word, position, type, LayerNorm
    fp32 = result.manifest["artifacts"][0]
    assert fp32["gate"]["status"] == "pass" and fp32["inputs"][0]["dtype"] == "int64"
    assert 0.3 < fp32["metrics"]["metric"] < 0.999  # a real, different model: cosine to the 6-layer teacher
    assert fp32["metrics"]["metric"] == pytest.approx(m["holdout_cosine_to_teacher"], abs=0.15)
    graph = onnx.load(str(out / fp32["path"]))
    assert sum(n.op_type == "Softmax" for n in graph.graph.node) == 3  # one attention softmax per kept layer
    assert json.loads((out / "manifest.json").read_text())["status"] == "passed"
