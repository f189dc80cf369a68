"""finetune: recovers a structurally pruned digits model, reports its history and the pruning summary,
and rejects bad training options before anything runs."""

from __future__ import annotations

import pytest
import torch

from deployc.build import check
from deployc.errors import PipelineError
from deployc.manager import run_pass
from deployc.passes.finetune import Finetune, FinetuneConfig
from deployc.passes.prune import PruneStructured, StructuredConfig
from tests.conftest import digits_config
from tests.passes.test_prune import make_ctx, one_thread, state_of, top1  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def pruned_state(digits_model, tmp_path_factory):
    ctx = make_ctx(tmp_path_factory.mktemp("prune"))
    return run_pass(PruneStructured(StructuredConfig(target_macs=0.5, measure_onnx=False)), state_of(digits_model), ctx)


def test_structured_50_percent_recovers_within_two_points(digits_model, pruned_state, tmp_path):
    """Done-when: structured 50% → MACs ≤ 0.55× and top-1 drop ≤ 2 points after ≤ 10 recovery epochs."""
    assert pruned_state.history[-1].metrics["macs_ratio"] <= 0.55
    assert top1(digits_model) - top1(pruned_state.module) > 0.1  # pruning alone hurts: recovery has work to do
    cfg = FinetuneConfig(epochs=10, lr=3e-3, augment=[{"shift": {"pixels": 1}}])
    tuned = run_pass(Finetune(cfg), pruned_state, make_ctx(tmp_path))
    assert top1(digits_model) - top1(tuned.module) <= 0.02
    m = tuned.history[-1].metrics
    assert m["epochs_run"] == 10 and m["metric_after"] == pytest.approx(top1(tuned.module))
    summary, history = tuned.history[-1].tables
    assert summary.title.startswith("pruning + recovery") and "prune.structured" in summary.rows[0][0]
    assert len(history.rows) == 10
    assert summary.timed == {8, 9}  # the latency columns stay out of manifest.json
    assert (
        pruned_state.module.stem[0].weight.shape == tuned.module.stem[0].weight.shape
    )  # same architecture, new weights
    assert not torch.equal(pruned_state.module.stem[0].weight, tuned.module.stem[0].weight)


def test_early_stop_restores_best_epoch(pruned_state, tmp_path):
    cfg = FinetuneConfig(epochs=8, lr=0.5, optimizer="sgd", early_stop_patience=1, schedule="constant")
    tuned = run_pass(Finetune(cfg), pruned_state, make_ctx(tmp_path))
    m = tuned.history[-1].metrics
    assert m["stopped_early"] and m["epochs_run"] < 8 and m["best_epoch"] <= m["epochs_run"] - 1


def test_bad_training_options_fail_at_config_check():
    with pytest.raises(PipelineError, match=r"augment.*unknown augmentation 'rotat'.*did you mean 'rotate'"):
        check(digits_config(passes=[{"finetune": {"augment": [{"rotat": {}}]}}]))
    with pytest.raises(PipelineError, match=r"augment.*time_warp.*unexpected keyword argument 'speed'"):
        check(digits_config(passes=[{"finetune": {"augment": [{"time_warp": {"speed": 2}}]}}]))
    with pytest.raises(PipelineError, match=r"finetune.*schedule"):
        check(digits_config(passes=[{"finetune": {"schedule": "cosin"}}]))
    with pytest.raises(PipelineError, match=r"ramp_epochs \(9\) is more than epochs \(3\)"):
        check(digits_config(passes=[{"prune.gradual": {"epochs": 3, "ramp_epochs": 9}}]))
    with pytest.raises(PipelineError, match=r"ratio or target_macs, not both"):
        check(digits_config(passes=[{"prune.structured": {"ratio": 0.5, "target_macs": 0.5}}]))


def test_build_with_prune_and_finetune_reports_summary(tmp_path):
    from deployc.build import build

    config = digits_config(
        passes=[{"prune.structured": {"ratio": 0.25, "measure_onnx": False}}, {"finetune": {"epochs": 2, "lr": 3e-3}}],
        validate={"max_drift": 0.05, "latency_runs": 2},
    )
    result = build(config, out=tmp_path / "out", quiet=True)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## pruning + recovery fine-tuning" in report and "## prune.structured: output channels per layer" in report
    names = [p["name"] for p in result.manifest["passes"]]
    assert names == ["prune.structured", "finetune"]
    assert result.manifest["passes"][0]["metrics"]["macs_ratio"] < 0.7
