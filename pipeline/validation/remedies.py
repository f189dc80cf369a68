"""Accuracy remedies: an artifact that misses its drift budget is emitted again with remedies, in a fixed order,
until one passes its gate or the trial budget (quantize.remedies.max_trials) runs out.

The loop knows no pass and no target. It asks the target which stages it can try on the artifact
(`Target.remedy_stages`), then, stage by stage in config.REMEDY_STAGES' order (calibration, granularity, symmetry,
smoothing, fallback), for candidates that change the best trial so far (`Target.remedies`); each candidate is
re-emitted from the same lowered graph/flatbuffer and validated by the same gate as the first artifact, on
data.validation. The first that passes ships; if none does, the closest one (lowest drift) ships with its failed
gate. Every trial is recorded in the shipped artifact's details and history (a table in the reports).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployc.compiler.contracts import Artifact, Context, Reemit, Remedy, Target
from deployc.core.config import REMEDY_STAGES, QuantizeSpec, RemediesSpec, ValidateConfig
from deployc.core.state import PassRecord, Table
from deployc.errors import failure_text
from deployc.storage.files import file_digest

STAGE_FIELDS = {"smoothing": "smoothing"}  # stage -> the QuantizeSpec field a target must realise to offer it
TRIALS_DIR = ".remedies"  # inside the staging folder; removed before the out dir is published


@dataclass
class Trial:
    index: int
    remedy: Remedy
    artifact: Artifact
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (all threads): what a shared machine's load sways least
    sha256: str | None = None  # of the trial's artifact file: a stage that changes nothing shows as a repeated hash

    @property
    def drift(self) -> float:
        drift = self.artifact.metrics.get("drift") if self.artifact.gate.get("status") in ("pass", "fail") else None
        return float(drift) if isinstance(drift, (int, float)) and math.isfinite(drift) else math.inf

    @property
    def passed(self) -> bool:
        return self.artifact.gate.get("status") == "pass"


def needs_remedy(art: Artifact, rules: ValidateConfig) -> bool:
    """A failed gate that remedies can act on: drift past the budget or non-finite outputs (not low int8 coverage,
    which a remedy could only make worse)."""
    if art.gate.get("status") != "fail":
        return False
    drift = art.metrics.get("drift")
    return not isinstance(drift, (int, float)) or not math.isfinite(drift) or drift > rules.max_drift + 1e-12


def loss_before_quantization(
    art: Artifact, earlier: list[Artifact], upstream: str | None, rules: ValidateConfig
) -> str | None:
    """Why remedies cannot help a quantized artifact that fails on drift: the torch-level passes already lost the
    accuracy (`upstream`, from their checks), or its target's fp32 artifact already fails. None when neither holds."""
    if art.kind == "fp32" or not needs_remedy(art, rules):
        return None
    if upstream:
        return f"the loss comes before quantization: {upstream}; int8 remedies not tried"
    fp32 = next((a for a in earlier if (a.target, a.row, a.kind) == (art.target, art.row, "fp32")), None)
    if fp32 is not None and needs_remedy(fp32, rules):
        drift = fp32.metrics.get("drift")
        shown = f"drift {drift:+.4g}" if isinstance(drift, (int, float)) else fp32.gate.get("reason", "failed")
        return f"the loss comes before quantization: {fp32.label} already fails ({shown}); int8 remedies not tried"
    return None


def best(trials: list[Trial]) -> Trial:
    """The first passing trial, else the lowest drift (ties go to the earlier, simpler trial)."""
    passing = [t for t in trials if t.passed]
    return passing[0] if passing else min(trials, key=lambda t: (t.drift, t.index))


def _capable(target: Target, stage: str) -> bool:
    """A stage realised by a QuantizeSpec field only some targets implement is tried only on those."""
    field = STAGE_FIELDS.get(stage)
    return field is None or field in target.quantize_fields


def _key(remedy: Remedy) -> str:
    return remedy.spec.model_dump_json() + repr(sorted(remedy.options.items()))


# ---- candidates the targets share: the spec-level stages ---------------------------------------------------


def spec_remedies(stage: str, base: Remedy, methods: list[str], alpha: float) -> list[Remedy]:
    """Candidates of the stages that change one QuantizeSpec field (calibration, granularity, symmetry,
    smoothing), from `base`; a target offers those its quantizer realises."""
    spec = base.spec

    def change(text: str, **update: Any) -> Remedy:
        return Remedy(stage, text, spec.model_copy(update=update), dict(base.options), base.fallback)

    if stage == "calibration":
        return [change(m, calibration=m) for m in methods if m != spec.calibration]
    if stage == "granularity":
        return [
            change(
                "per-tensor weights" if spec.per_channel else "per-channel weights", per_channel=not spec.per_channel
            )
        ]
    if stage == "symmetry":
        flipped = not spec.symmetric_activations
        return [change("symmetric activations" if flipped else "asymmetric activations", symmetric_activations=flipped)]
    if stage == "smoothing" and spec.smoothing is None:
        return [change(f"SmoothQuant alpha {alpha:g}", smoothing=alpha)]
    return []


def fallback_steps(units: list[list[str]], limit: int) -> list[list[str]]:
    """The layers each fallback trial keeps out of int8: those of the 1, 2, 4, 8 ... worst groups (a group: the
    layers one damaged tensor is quantized for), then all `limit` groups; k groups cost about log2(k) trials."""
    limit = min(limit, len(units))
    counts, k = [], 1
    while k < limit:
        counts.append(k)
        k *= 2
    if limit:
        counts.append(limit)
    return [list(dict.fromkeys(name for unit in units[:n] for name in unit)) for n in counts]


def fallback_remedy(base: Remedy, layers: list[str], how: str, **update: Any) -> Remedy:
    """`base` with `layers` (worst first) kept out of int8; `update` says where the target puts them."""
    short = [name.rsplit("/", 1)[-1] for name in layers]  # TFLite tensor names carry the whole module path
    shown = ", ".join(short[:4]) + (f" (+{len(layers) - 4})" if len(layers) > 4 else "")
    spec = base.spec.model_copy(update={k: v for k, v in update.items() if k in QuantizeSpec.model_fields})
    options = {**base.options, **{k: v for k, v in update.items() if k not in QuantizeSpec.model_fields}}
    return Remedy("fallback", f"{len(layers)} layer(s) in {how}: {shown}", spec, options, tuple(layers))


# ---- the loop ----------------------------------------------------------------------------------------------


def remedy_artifact(
    target: Target,
    first: Artifact,
    reemit: Reemit,
    lowered: Any,
    ctx: Context,
    validate: Callable[..., None],
    spec: RemediesSpec,
    log: Callable[[str], None],
    timed: Callable[[Artifact], None] | None = None,
) -> Artifact:
    """Try remedies on `first` (validated, failed) until one passes or spec.max_trials artifacts were made; returns
    the artifact that ships, its file in first's place, with every trial in details['remedies'] and its history.
    `validate(art, latency=False)` scores a trial; `timed` then measures the latency of the one that ships."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    offered = set(target.remedy_stages(first, lowered))
    stages = [s for s in REMEDY_STAGES if s in spec.stages and s in offered and _capable(target, s)]
    if not stages:  # e.g. an fp16 or dynamic artifact, or a graph a pass already quantized
        return first
    # trial 1 is the build's own artifact: made and validated before the loop (contracts.Target.build, the driver)
    perf = first.perf
    seconds = perf.get("made_seconds", 0.0) + perf.get("validated_seconds", 0.0)
    cpu_seconds = perf.get("made_cpu_seconds", 0.0) + perf.get("validated_cpu_seconds", 0.0)
    as_configured = Remedy("as configured", "—", ctx.config.quantize)
    trials = [Trial(1, as_configured, first, seconds, cpu_seconds, sha256=_digest(first))]
    seen = {_key(trials[0].remedy)}
    skipped: dict[str, str] = {}
    stopped: str | None = None
    root = ctx.work_dir / TRIALS_DIR / f"{first.target}-{first.precision}"
    log(f"{first.label}: {first.gate.get('reason')}; trying remedies ({', '.join(stages)})")
    for stage in stages:
        if trials[-1].passed or len(trials) >= spec.max_trials:
            break
        stopped = _out_of_time(spec, t0, trials)
        if stopped:
            break
        base = best(trials)
        t_stage = time.perf_counter()
        try:
            candidates = target.remedies(stage, base.remedy, base.artifact, lowered, ctx)
        except Exception as exc:  # a stage the target cannot prepare (e.g. a ranking run that fails) is skipped
            skipped[stage] = failure_text(exc)
            log(f"{first.label}: remedy stage {stage} skipped: {skipped[stage]}")
            continue
        log(
            f"{first.label}: remedy stage {stage}: {len(candidates)} candidate(s) ({time.perf_counter() - t_stage:.1f} s)"
        )
        for remedy in candidates:
            if len(trials) >= spec.max_trials or trials[-1].passed:
                break
            if _key(remedy) in seen:
                continue
            stopped = _out_of_time(spec, t0, trials)
            if stopped:
                break
            seen.add(_key(remedy))
            log(f"{first.label}: remedy trial {len(trials) + 1} ({stage}: {remedy.change}) …")
            trial = _run(len(trials) + 1, remedy, target, reemit, ctx, root, validate)
            trials.append(trial)
            log(
                f"{first.label}: remedy trial {trial.index} ({stage}: {remedy.change}): {_outcome(trial)} "
                f"({trial.seconds:.1f} s)"
            )
        if stopped:
            break
    if stopped:
        log(f"{first.label}: remedies stopped: {stopped}")
    chosen = best(trials)
    shipped = _ship(chosen, first, ctx.work_dir, root)
    if timed is not None and chosen.index != 1 and "drift" in chosen.artifact.metrics:  # ran and was scored
        timed(shipped)
    shutil.rmtree(ctx.work_dir / TRIALS_DIR, ignore_errors=True)
    _record(shipped, trials, chosen, ctx, stages, (time.perf_counter() - t0, time.process_time() - cpu0), stopped)
    if skipped:
        shipped.details["remedies"]["skipped_stages"] = skipped
    return shipped


def _out_of_time(spec: RemediesSpec, t0: float, trials: list[Trial]) -> str | None:
    """Why no further trial may start: the wall-time budget is spent (None while it is not, or there is none)."""
    if spec.max_seconds is None or time.perf_counter() - t0 < spec.max_seconds:
        return None
    return (
        f"wall-time budget quantize.remedies.max_seconds={spec.max_seconds:g} s reached after {len(trials)} "
        f"trial(s); the best so far ships"
    )


def _run(
    index: int,
    remedy: Remedy,
    target: Target,
    reemit: Reemit,
    ctx: Context,
    root: Path,
    validate: Callable[..., None],
) -> Trial:
    t0, cpu0 = time.perf_counter(), time.process_time()
    work = root / str(index)
    art = reemit(ctx.for_remedy(remedy, work))
    try:
        validate(art, latency=False)  # only the trial that ships is timed
    except Exception as exc:  # its runtime cannot run this trial: the others may still do
        art.error = failure_text(exc)
        art.gate = {"status": "error", "reason": unvalidated_reason(exc, art.error)}
    target.close(art)
    return Trial(index, remedy, art, time.perf_counter() - t0, time.process_time() - cpu0, _digest(art))


def unvalidated_reason(exc: BaseException, text: str) -> str:
    """The gate reason of an artifact its validation could not run: out of memory (budget), or its runtime."""
    return f"not validated: {text}" if isinstance(exc, MemoryError) else f"its runtime cannot run it: {text}"


def _digest(art: Artifact) -> str | None:
    return file_digest(art.path) if art.path is not None and art.path.is_file() else None


def _outcome(trial: Trial) -> str:
    status = trial.artifact.gate.get("status")
    if status == "error":
        return f"error: {trial.artifact.gate.get('reason')}"
    return f"drift {'n/a' if math.isinf(trial.drift) else f'{trial.drift:+.4g}'}, {status}"


def _ship(chosen: Trial, first: Artifact, staging: Path, root: Path) -> Artifact:
    """The chosen trial's artifact with its files moved to where the first artifact's are."""
    art = chosen.artifact
    if chosen.index == 1 or art.path is None:
        return art
    work = root / str(chosen.index)
    for src in sorted(p for p in work.rglob("*") if p.is_file()):
        dst = staging / src.relative_to(work)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    art.path = staging / art.path.relative_to(work)
    return art


def _record(
    art: Artifact,
    trials: list[Trial],
    chosen: Trial,
    ctx: Context,
    stages: list[str],
    seconds: tuple[float, float],
    stopped: str | None = None,
) -> None:
    """details['remedies'] and a 'remedies' history record (its table in the reports); `seconds`: the whole loop's
    wall and CPU seconds, fallback ranking included (timings.json)."""
    data = ctx.validation
    scored = f"data.validation ({data.source}, {len(data)} samples)" if data is not None else "data.validation"
    metric = ctx.reference.metric.label if ctx.reference is not None else "metric"
    log = [
        {
            "trial": t.index,
            "stage": t.remedy.stage,
            "change": t.remedy.change,
            "metric": t.artifact.metrics.get("metric"),
            "drift": None if math.isinf(t.drift) else t.drift,
            "gate": t.artifact.gate.get("status"),
            "sha256": t.sha256,
            **({"error": t.artifact.gate.get("reason")} if t.artifact.gate.get("status") == "error" else {}),
            **({"fallback": list(t.remedy.fallback)} if t.remedy.fallback else {}),
        }
        for t in trials
    ]
    summary = {
        "trials": len(trials),
        "chosen_trial": chosen.index,
        "passed": chosen.passed,
        "stages": stages,
        "scored_on": scored,
        "budget": ctx.config.validate_.max_drift,
        "fallback": list(chosen.remedy.fallback),
        "quantize": chosen.remedy.spec.model_dump(mode="json", exclude={"remedies"}),
        "trial_log": log,
        **({"stopped": stopped} if stopped else {}),
    }
    art.details["remedies"] = summary
    rows = tuple(
        (
            t.index,
            t.remedy.stage,
            t.remedy.change,
            "n/a" if t.artifact.metrics.get("metric") is None else f"{t.artifact.metrics['metric']:.4f}",
            "n/a" if math.isinf(t.drift) else f"{t.drift:+.4g}",
            t.artifact.gate.get("status", ""),
            "shipped" if t is chosen else "",
            f"{t.seconds:.2f}" if t.seconds else "—",
        )
        for t in trials
    )
    table = Table(
        f"remedies: {art.label} trials (scored by its gate on {scored}; budget {summary['budget']:g} {metric} drift)",
        ("trial", "stage", "change", metric, "drift", "gate", "", "seconds"),
        rows,
        timed=frozenset({7}),
    )
    record = PassRecord(
        "remedies",
        {"stages": stages},
        chosen.index != 1,
        {k: summary[k] for k in ("trials", "chosen_trial", "passed", "scored_on")},
        (table,),
        {
            "cpu_seconds": round(seconds[1], 3),
            # the whole sequence: trial 1 (made and validated before the loop) and the loop
            "with_trial_1_seconds": round(seconds[0] + trials[0].seconds, 3),
            "with_trial_1_cpu_seconds": round(seconds[1] + trials[0].cpu_seconds, 3),
            **{f"trial_{t.index}_seconds": round(t.seconds, 3) for t in trials},
            **{f"trial_{t.index}_cpu_seconds": round(t.cpu_seconds, 3) for t in trials},
        },
        seconds=seconds[0],
    )
    art.history = tuple(art.history) + (record,)
    if chosen.index != 1 or len(trials) > 1:
        how = f"after {len(trials)} remedy trials" if chosen.passed else f"closest of {len(trials)} remedy trials"
        art.gate = dict(
            art.gate,
            reason=f"{art.gate.get('reason', '')} ({how}; shipped trial {chosen.index}: "
            f"{chosen.remedy.stage}, {chosen.remedy.change})",
        )
    if stopped:
        art.gate = dict(art.gate, reason=f"{art.gate.get('reason', '')} (remedies stopped: {stopped})")
