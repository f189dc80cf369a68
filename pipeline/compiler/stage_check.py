"""After every torch-level pass, the metric of the module it returned, on a bounded subset of the validation set,
against the model as loaded: a pass that loses the accuracy is named as soon as it ran, not found later as the
int8 artifact's drift (where remedies would chase it for minutes)."""

from __future__ import annotations

from typing import Any

import numpy as np

from deployc.core.state import ModelState, PassRecord
from deployc.data.reference import as_arrays, compare, model_activations, reference_head, run_batched

CHECK_SAMPLES = 256  # validation samples a torch-level pass is scored on (the reference's first ones)
RECORD_KEY = "validation_check"  # where the figures go in the pass record (and so the manifest)


def stage_drift(state: ModelState, ctx: Any) -> dict[str, Any] | None:
    """{metric, value, reference, drift, samples, budget, over_budget} for the module of `state`; None when there is
    no module, reference or validation set to score it with."""
    ref, data = ctx.reference, ctx.validation
    if state.module is None or ref is None or data is None:
        return None
    n = min(CHECK_SAMPLES, len(data))
    if data.fixed_batch:  # a fixed batch axis takes whole batches only
        n = max(n - n % data.fixed_batch, min(data.fixed_batch, len(data)))
    head = reference_head(ref, n, len(data))
    if head is None:
        return None
    import torch

    module = state.module

    def run(x: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return as_arrays(module(*[torch.from_numpy(x[s.name]) for s in state.inputs]))

    training = module.training
    module.eval()  # scored as it will be exported; the pass's own mode is given back
    try:
        head_data = data.take(n)
        batches = head_data.within_budget(model_activations(state), ctx.config.data.batch_size, "the stage check")
        outputs = run_batched(run, head_data, batches)
    finally:
        module.train(training)
    scores = compare(outputs, head)
    budget = ctx.config.validate_.max_drift
    drift = float(scores["drift"])
    return {
        "metric": ref.metric.label,
        "value": float(scores["metric"]),
        "reference": float(head.value),
        "drift": drift,
        "samples": n,
        "budget": budget,
        "over_budget": bool(not np.isfinite(drift) or drift > budget + 1e-12),
    }


def warning_text(name: str, check: dict[str, Any]) -> str:
    return (
        f"warning: after pass '{name}' the model scores {check['metric']} {check['value']:.4f} on "
        f"{check['samples']} validation samples (the model as loaded: {check['reference']:.4f}), drift "
        f"{check['drift']:+.4g} past the budget {check['budget']:g}: this pass loses the accuracy, before any export "
        f"or quantization"
    )


def upstream_loss(history: tuple[PassRecord, ...]) -> str | None:
    """When the last torch-level check is past the budget: the pass that lost it (the first after which every check
    stays past the budget) and the figures, as one phrase; else None."""
    checked = [r for r in history if isinstance(r.metrics.get(RECORD_KEY), dict)]
    if not checked or not checked[-1].metrics[RECORD_KEY]["over_budget"]:
        return None
    culprit = checked[-1]
    for r in reversed(checked):
        if not r.metrics[RECORD_KEY]["over_budget"]:
            break
        culprit = r
    c, last = culprit.metrics[RECORD_KEY], checked[-1].metrics[RECORD_KEY]
    return (
        f"pass '{culprit.name}' lost it ({c['metric']} {c['reference']:.4f} -> {c['value']:.4f} on {c['samples']} "
        f"validation samples; after the last torch pass: drift {last['drift']:+.4g}, budget {last['budget']:g})"
    )
