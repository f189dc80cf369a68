"""finetune — recovery training after pruning (or any torch pass) with the shared training loop."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from pipeline.contracts import Context, Pass
from pipeline.registry import register_pass
from pipeline.state import ModelState
from passes.model_stats import SUMMARY_HEADER, stats_from_metrics, summary_row, validation_metric
from passes.training import FitResult, TrainConfig, fit


class FinetuneConfig(TrainConfig):
    """Every option of the shared training loop (passes/training.py: TrainConfig)."""


def history_table(result: FitResult, title: str) -> dict[str, Any]:
    rows = [[h["epoch"], f"{h['loss']:.4f}", f"{h['holdout_metric']:.4f}", f"{h['lr']:.2e}"] for h in result.history]
    return {"title": title, "header": ["epoch", "train loss", "holdout metric", "lr (end of epoch)"], "rows": rows}


def recovery_summary(state: ModelState, metric_after: float | None) -> dict[str, Any] | None:
    """The latest pruning pass's summary row again, its metric now measured after this recovery training."""
    record = next((r for r in reversed(state.history) if r.name.startswith("prune.") and "params_before" in r.metrics), None)
    if record is None:
        return None
    before, pruned = stats_from_metrics(record.metrics, "before"), stats_from_metrics(record.metrics, "after")
    recovered = dataclasses.replace(pruned, metric=metric_after)
    method = record.name + "".join(f" {k}={v}" for k, v in record.config.items()
                                   if k in ("ratio", "target_macs", "sparsity", "importance", "scope") and v is not None)
    return {"title": "pruning + recovery fine-tuning (metric on data.validation after finetune)",
            "header": SUMMARY_HEADER, "rows": [summary_row(method + " + finetune", before, recovered)]}


@register_pass
class Finetune(Pass):
    name = "finetune"
    Config = FinetuneConfig
    requires = frozenset({"torch", "data.train"})
    invalidates = frozenset({"onnx"})

    def run(self, state: ModelState, ctx: Context) -> tuple[ModelState, bool, dict[str, Any]]:
        cfg: FinetuneConfig = self.config
        module = copy.deepcopy(state.module)
        before = validation_metric(module, state, ctx)
        result = fit(module, ctx.train, cfg, ctx, [s.name for s in state.inputs], description="finetune")
        after = validation_metric(module, state, ctx)
        metrics: dict[str, Any] = {"epochs_run": len(result.history), "best_epoch": result.best_epoch,
                                   "stopped_early": result.stopped_early, "epochs_to_converge": result.epochs_to_converge()}
        if result.history:
            metrics.update(final_loss=result.history[-1]["loss"], holdout_metric=result.history[-1]["holdout_metric"])
        if before is not None and after is not None:
            metrics.update(metric_before=before, metric_after=after)
        tables = [history_table(result, "finetune: training history")]
        summary = recovery_summary(state, after)
        if summary:
            tables.insert(0, summary)
        metrics["report_tables"] = tables
        return state.replace(module=module, onnx=None), bool(result.history), metrics
