"""quantize.tune — accuracy-aware static int8: build candidates in a fixed order (the spec as given,
other calibration methods, per-channel flipped, activation symmetry flipped, then the most sensitive
layers kept in fp32 one more at a time) and stop at the first within the drift budget. The best
candidate is always emitted; every trial and every fallback layer is reported."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ConfigDict, Field

from deployc.config import TuneSpec
from deployc.contracts import Context, PassResult
from deployc.data import Dataset
from deployc.passes.quantize import Int8Config, QuantizePass, quantize_int8
from deployc.passes.sensitivity import LayerError, single_layer_errors
from deployc.state import ModelState, Table
from deployc.timing import median_ms


class TuneConfig(Int8Config):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tune: TuneSpec = Field(default_factory=TuneSpec)


@dataclass
class Trial:
    index: int
    stage: str  # as configured | calibration | per_channel | symmetry | fallback
    config: Int8Config
    proto: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    latency_ms: float = float("nan")

    @property
    def drift(self) -> float:
        return self.metrics.get("drift", float("inf"))

    def describe(self) -> str:
        c = self.config
        parts = [
            c.calibration,
            "per-channel" if c.per_channel else "per-tensor",
            "symmetric" if c.symmetric_activations else "asymmetric",
        ]
        if c.exclude:
            parts.append(f"fp32: {', '.join(c.exclude)}")
        return ", ".join(parts)


@dataclass
class TuneResult:
    trials: list[Trial]
    best: Trial
    budget: float
    fallback: list[LayerError]  # layers the best candidate keeps in fp32, with their sensitivity
    sensitivity: list[LayerError]

    @property
    def within_budget(self) -> bool:
        return self.best.drift <= self.budget + 1e-12


def _latency_ms(sess: Any, data: Dataset, runs: int = 10) -> float:
    sample = {k: v[:1] for k, v in data.inputs.items()}
    return median_ms(lambda: sess.run(None, sample), runs, warmup=2)


def score(
    proto: Any, data: Dataset, reference: Any, batch: int = 64, threads: int | None = None
) -> tuple[dict[str, float], float]:
    """compare() against the reference on `data` with onnxruntime, and batch-1 latency."""
    from deployc.ort import session
    from deployc.validate import compare

    sess = session(proto, threads)
    parts = [sess.run(None, x) for x, _ in data.batches(batch)]
    outputs = [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
    return compare(outputs, reference), _latency_ms(sess, data)


def _candidates(
    spec: Int8Config, tune: TuneSpec, best: Callable[[], Trial], rank: Callable[[Int8Config], list[LayerError]]
) -> Iterator[tuple[str, Int8Config]]:
    """(stage, config) in the tuner's order; later stages start from the best candidate so far."""
    yield "as configured", spec
    for method in tune.methods:
        if method != spec.calibration:
            yield "calibration", spec.model_copy(update={"calibration": method})
    base = best().config
    yield "per_channel", base.model_copy(update={"per_channel": not base.per_channel})
    base = best().config
    yield "symmetry", base.model_copy(update={"symmetric_activations": not base.symmetric_activations})
    base = best().config
    ranked = [e for e in rank(base) if e.node not in base.exclude and e.error > 0]
    for k in range(1, min(tune.max_fallback, len(ranked)) + 1):
        yield "fallback", base.model_copy(update={"exclude": list(base.exclude) + [e.node for e in ranked[:k]]})


def tune_int8(
    proto: Any,
    calibration: Dataset,
    data: Dataset,
    reference: Any,
    spec: Int8Config,
    tune: TuneSpec,
    budget: float,
    advance: Callable[..., None] = lambda *a, **k: None,
) -> TuneResult:
    """Build and score int8 candidates until one is within `budget`; returns every trial and the best."""
    trials: list[Trial] = []
    sensitivity: list[LayerError] = []

    def best() -> Trial:  # lowest drift; ties go to the earlier (simpler) candidate
        return min(trials, key=lambda t: (t.drift, t.index))

    def rank(base: Int8Config) -> list[LayerError]:
        probe = calibration.take(tune.sensitivity_samples)
        sensitivity[:] = single_layer_errors(
            proto, probe, lambda p, only: quantize_int8(p, calibration, base, only=only)
        )
        return sensitivity

    for stage, config in _candidates(spec, tune, best, rank):
        trial = Trial(len(trials) + 1, stage, config)
        trial.proto = quantize_int8(proto, calibration, config)
        trial.metrics, trial.latency_ms = score(trial.proto, data, reference)
        trials.append(trial)
        advance(1, drift=trial.drift)
        if trial.drift <= budget + 1e-12 or len(trials) >= tune.max_trials:
            break
    chosen = best()
    by_node = {e.node: e for e in sensitivity}
    fallback = [
        by_node.get(n) or LayerError(n, "?", n, float("nan")) for n in chosen.config.exclude if n not in spec.exclude
    ]
    return TuneResult(trials, chosen, budget, fallback, sensitivity)


def report(result: TuneResult, tuned_on: str, reference: str, metric: str) -> tuple[dict[str, Any], tuple[Table, ...]]:
    """Pass metrics (with the sensitivity the report charts) and tables: the trials, the layers kept in fp32."""
    rows = tuple(
        (
            t.index,
            t.stage,
            t.describe(),
            f"{t.metrics.get('metric', float('nan')):.4f}",
            f"{t.drift * 100:+.2f}%",
            f"{t.latency_ms:.3f}",
            ("chosen" if t is result.best else "") + (" within budget" if t.drift <= result.budget + 1e-12 else ""),
        )
        for t in result.trials
    )
    tables = [
        Table(
            f"quantize.tune: trials (scored on {tuned_on} against {reference}; budget "
            f"{result.budget * 100:.2f}% {metric} drift)",
            ("trial", "stage", "config", metric, "drift", "ms/sample (batch 1)", "result"),
            rows,
            frozenset({5}),
        )
    ]
    if result.fallback:
        tables.append(
            Table(
                "quantize.tune: layers kept in fp32 (sensitivity: model output error with only that layer in int8)",
                ("layer", "node", "op", "sensitivity"),
                tuple((e.layer, e.node, e.op_type, f"{e.error:.4g}") for e in result.fallback),
            )
        )
    metrics = {
        "trials": len(result.trials),
        "chosen_trial": result.best.index,
        "within_budget": result.within_budget,
        "drift": result.best.drift,
        "budget": result.budget,
        "tuned_on": tuned_on,
        "reference": reference,
        "fallback": [e.node for e in result.fallback],
        "trial_log": [
            {
                "trial": t.index,
                "stage": t.stage,
                "config": t.describe(),
                "metric": t.metrics.get("metric"),
                "drift": t.drift,
            }
            for t in result.trials
        ],
        "sensitivity": [{"layer": e.layer, "error": e.error} for e in result.sensitivity],
    }
    return metrics, tuple(tables)


def tuning_reference(state: ModelState, ctx: Context, tune: TuneSpec) -> tuple[Dataset, Any, str, str]:
    """(data, reference, data description, reference description) the tuner scores against."""
    from deployc.metrics import get_metric
    from deployc.validate import compute_reference

    data = ctx.validation if tune.data == "validation" else ctx.calibration
    where = f"data.{tune.data} ({data.source}, {len(data)} samples)"
    build_ref = getattr(ctx, "reference", None)  # the build's reference, when the driver shares it
    if build_ref is not None and tune.data == "validation":
        return data, build_ref, where, "the build's reference (model as loaded)"
    ref = compute_reference(state, data, get_metric(ctx.config), ctx.config.data.batch_size)
    return data, ref, where, "the fp32 model entering quantization"


class QuantizeTune(QuantizePass):
    name = "quantize.tune"
    Config = TuneConfig
    requires = frozenset({"onnx", "data.calibration", "data.validation"})
    precision = "int8"
    cacheable = False  # scores against the build's reference, which the cache key (input graph) does not cover

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        self.check_exclude(state.onnx)
        up = self.upgraded(state, ctx)
        tune = self.config.tune
        budget = ctx.config.validate_.max_drift if tune.max_drift is None else tune.max_drift
        data, ref, tuned_on, ref_desc = tuning_reference(state, ctx, tune)
        spec = Int8Config.model_validate(self.config.model_dump(exclude={"tune"}))
        with ctx.instruments.progress("quantize.tune", tune.max_trials) as advance:
            result = tune_int8(up.proto, ctx.calibration, data, ref, spec, tune, budget, advance)
        done = self.done(state, result.best.proto, up.metrics())
        metrics, tables = report(result, tuned_on, ref_desc, ref.metric.name)
        latency = {f"trial_{t.index}_latency_ms": t.latency_ms for t in result.trials}
        return PassResult(done.state, True, {**done.metrics, **metrics}, tables, latency)
