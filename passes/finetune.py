"""finetune — recovery training with the shared training loop. After a pruning pass it distils from the model
as loaded (Torch-Pruning's and Minitron's recovery recipe) at a learning rate picked by a range test."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveFloat

from deployc.compiler.contracts import Context, Pass, PassResult
from deployc.core.state import ModelState, Table
from deployc.data.dataset import Dataset
from deployc.errors import UsageError
from deployc.passes.model_stats import stats_from_record, summary_row, summary_table, validation_metric
from deployc.passes.training import FitResult, LossFn, TrainConfig, fit

DistillLoss = Literal["soft", "embedding", "mse"]


class FinetuneConfig(TrainConfig):
    """Every option of the shared training loop (passes/training.py: TrainConfig), plus the teacher.

    With a teacher, the loss follows the build's metric: a label metric (top1, top5) gives
    alpha × T²·KL(teacher ‖ student at temperature T) + (1 − alpha) × cross-entropy on the class labels (the KL
    term alone when data.train has none); the cosine metric gives 1 − cosine to the teacher's outputs; any other
    metric, MSE to the teacher's outputs.
    """

    lr: PositiveFloat | Literal["auto"] = Field(
        "auto", description="learning rate, or auto: a learning-rate range test on the training loss picks it"
    )
    teacher: Literal["auto", "loaded", "none"] = Field(
        "auto",
        description="auto: distil from the model as loaded when a pruning pass ran before, else plain "
        "fine-tuning; loaded: always distil from it; none: plain fine-tuning on the labels",
    )
    # T 2, alpha 0.5: on benchmarks/prune_recovery.py as good as plain with clean labels, +5 points with noisy ones
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the soft targets (class labels)")
    alpha: float = Field(
        0.5, ge=0, le=1, description="weight of the soft targets; 1 − alpha goes to the hard labels (class labels)"
    )


def history_table(result: FitResult, title: str) -> Table:
    rows = tuple(
        (h["epoch"], f"{h['loss']:.4f}", f"{h['holdout_metric']:.4f}", f"{h['lr']:.2e}") for h in result.history
    )
    return Table(title, ("epoch", "train loss", "holdout metric", "lr (end of epoch)"), rows)


def recovery_summary(state: ModelState, metric_after: float | None, how: str) -> Table | None:
    """The latest pruning pass's summary row again, its metric now measured after this recovery training."""
    record = next(
        (r for r in reversed(state.history) if r.name.startswith("prune.") and "params_before" in r.metrics), None
    )
    if record is None:
        return None
    before, pruned = stats_from_record(record, "before"), stats_from_record(record, "after")
    recovered = dataclasses.replace(pruned, metric=metric_after)
    method = record.name + "".join(
        f" {k}={v}"
        for k, v in record.config.items()
        if k in ("ratio", "target_macs", "sparsity", "importance", "scope") and v is not None
    )
    return summary_table(
        f"pruning + recovery fine-tuning, {how} (metric on data.validation after finetune)",
        [summary_row(method + " + finetune", before, recovered)],
    )


def choose_teacher(cfg: FinetuneConfig, state: ModelState, ctx: Context) -> tuple[Any, str]:
    """The module to distil from (None for plain fine-tuning) and why."""
    if cfg.teacher == "none":
        return None, "teacher: none"
    if cfg.teacher == "auto" and "pruned" not in state.facts:
        return None, "no pruning pass before finetune"
    if ctx.loaded is None or ctx.loaded.module is None:
        return None, "the model as loaded is not in the context (pass run outside a build): plain fine-tuning"
    return ctx.loaded.module.eval(), "distilled from the model as loaded"


def distill_kind(ctx: Context) -> DistillLoss:
    """soft targets for a label metric (classes); a label-free metric compares outputs, so the loss does too."""
    from deployc.data.metrics import get_metric

    metric = get_metric(ctx.config)
    if metric.name == "cosine":
        return "embedding"
    return "soft" if metric.needs_labels else "mse"


def distillation_loss(teacher: Any, kind: DistillLoss, cfg: FinetuneConfig) -> LossFn:
    """loss_fn for fit(): the teacher runs on the same (augmented) batch as the student."""
    import torch
    import torch.nn.functional as F

    from deployc.passes.distill_losses import embedding_loss, first_tensor, knowledge_distillation_loss

    def loss(module: Any, inputs: list[Any], labels: Any) -> Any:
        with torch.no_grad():
            target = first_tensor(teacher(*inputs))
        out = first_tensor(module(*inputs))
        if kind == "soft":
            hard = None if labels.dtype.is_floating_point else labels  # unlabelled data: soft targets alone
            alpha = cfg.alpha if hard is not None else 1.0
            return knowledge_distillation_loss(out, target, hard, cfg.temperature, alpha, cfg.label_smoothing)
        if kind == "embedding":
            return embedding_loss(out, target)
        return F.mse_loss(out, target)

    return loss


class Finetune(Pass):
    name = "finetune"
    Config = FinetuneConfig
    requires = frozenset({"torch", "data.train"})
    invalidates = frozenset({"onnx"})
    reads_config = frozenset()

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        cfg: FinetuneConfig = self.config
        names = [s.name for s in state.inputs]
        module = copy.deepcopy(state.module)
        teacher, why = choose_teacher(cfg, state, ctx)
        data, loss_fn, kind = ctx.train, None, None
        metrics: dict[str, Any] = {"teacher": "loaded" if teacher is not None else "none", "teacher_reason": why}
        if teacher is not None:
            from deployc.passes.distill import run_model
            from deployc.passes.student import count_params

            _check_outputs(teacher, module, state)
            kind = distill_kind(ctx)
            hard_labels = kind == "soft" and data.labels is not None and np.issubdtype(data.labels.dtype, np.integer)
            if not hard_labels:  # the teacher's outputs stand in for labels: fit() scores its holdout against them
                data = Dataset(data.inputs, run_model(teacher, data, names), data.source)
            loss_fn = distillation_loss(teacher, kind, cfg)
            metrics.update(teacher_params=count_params(teacher), distill_loss=kind)
            if kind == "soft":
                metrics.update(temperature=cfg.temperature, alpha=cfg.alpha if hard_labels else 1.0)
        before = validation_metric(module, state, ctx)
        result = fit(module, data, cfg, ctx, names, loss_fn=loss_fn, description="finetune")
        after = validation_metric(module, state, ctx)
        metrics.update(
            lr=result.lr,
            lr_from="range test" if result.lr_range else "config",
            epochs_run=len(result.history),
            best_epoch=result.best_epoch,
            stopped_early=result.stopped_early,
            epochs_to_converge=result.epochs_to_converge(),
        )
        if result.history:
            metrics.update(final_loss=result.history[-1]["loss"], holdout_metric=result.history[-1]["holdout_metric"])
        if before is not None and after is not None:
            metrics.update(metric_before=before, metric_after=after)
        tables = [history_table(result, "finetune: training history")]
        summary = recovery_summary(state, after, f"distilled ({kind} loss)" if kind else "plain")
        if summary:
            tables.insert(0, summary)
        return PassResult(state.replace(module=module, onnx=None), bool(result.history), metrics, tuple(tables))


def _check_outputs(teacher: Any, student: Any, state: ModelState) -> None:
    """The teacher must answer in the student's shape, or no loss can compare them."""
    import torch

    from deployc.passes.distill_losses import first_tensor

    example = state.example_tensors(batch=2)
    with torch.no_grad():
        t, s = first_tensor(teacher(*example)).shape, first_tensor(student.eval()(*example)).shape
    if t != s:
        raise UsageError(
            f"finetune.teacher: the model as loaded returns shape {list(t)}, the model being fine-tuned "
            f"{list(s)}; set teacher: none"
        )
