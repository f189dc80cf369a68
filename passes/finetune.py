"""finetune — recovery training after pruning (or any torch pass) with the shared training loop."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from deployc.contracts import Context, Pass, PassResult
from deployc.passes.model_stats import stats_from_record, summary_row, summary_table, validation_metric
from deployc.passes.training import FitResult, TrainConfig, fit
from deployc.state import ModelState, Table


class FinetuneConfig(TrainConfig):
    """Every option of the shared training loop (passes/training.py: TrainConfig)."""


def history_table(result: FitResult, title: str) -> Table:
    rows = tuple(
        (h["epoch"], f"{h['loss']:.4f}", f"{h['holdout_metric']:.4f}", f"{h['lr']:.2e}") for h in result.history
    )
    return Table(title, ("epoch", "train loss", "holdout metric", "lr (end of epoch)"), rows)


def recovery_summary(state: ModelState, metric_after: float | None) -> Table | None:
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
        "pruning + recovery fine-tuning (metric on data.validation after finetune)",
        [summary_row(method + " + finetune", before, recovered)],
    )


class Finetune(Pass):
    name = "finetune"
    Config = FinetuneConfig
    requires = frozenset({"torch", "data.train"})
    invalidates = frozenset({"onnx"})
    reads_config = frozenset()

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        cfg: FinetuneConfig = self.config
        module = copy.deepcopy(state.module)
        before = validation_metric(module, state, ctx)
        result = fit(module, ctx.train, cfg, ctx, [s.name for s in state.inputs], description="finetune")
        after = validation_metric(module, state, ctx)
        metrics: dict[str, Any] = {
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "epochs_to_converge": result.epochs_to_converge(),
        }
        if result.history:
            metrics.update(final_loss=result.history[-1]["loss"], holdout_metric=result.history[-1]["holdout_metric"])
        if before is not None and after is not None:
            metrics.update(metric_before=before, metric_after=after)
        tables = [history_table(result, "finetune: training history")]
        summary = recovery_summary(state, after)
        if summary:
            tables.insert(0, summary)
        return PassResult(state.replace(module=module, onnx=None), bool(result.history), metrics, tuple(tables))
