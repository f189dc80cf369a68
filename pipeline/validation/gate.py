"""The validation gate: every artifact run on its own runtime over the validation set, compared with the reference
(data/reference.py), held to the drift budget and the int8-coverage floor; an artifact that cannot run is never a pass."""

from __future__ import annotations

import numpy as np

from deployc.compiler.contracts import Artifact, Target
from deployc.core import memory
from deployc.core.config import ValidateConfig
from deployc.core.timing import Stats, measure
from deployc.data.dataset import Dataset
from deployc.data.reference import Reference, compare, matches_reference, non_finite, run_batched
from deployc.validation.gates import more_on_cpu

LOW_INT8_COVERAGE = 0.5


def batch1_latency_ms(target: Target, artifact: Artifact, data: Dataset, runs: int) -> Stats:
    """Wall ms of one batch-1 inference (median and spread), after at least 0.1 s of warm-up runs."""
    sample = next(data.batches(1))[0]  # batch 1 along each input's own batch axis
    return measure(lambda: target.infer(artifact, sample), runs, warmup=3, min_warmup_s=0.1)


def batch_of(artifact: Artifact, wanted: int) -> int:
    """Samples a validation batch of `artifact`: one for dynamic quantization, whose activation scales come from the
    whole batch (its outputs change with the samples beside them: resemblyzer's by 0.17, its gate from pass to fail
    as the memory budget resized the batches), so its verdict is each sample's alone, as one request gets it."""
    return 1 if artifact.kind == "dynamic" else wanted


def inference_batches(target: Target, artifact: Artifact, data: Dataset, wanted: int) -> memory.Guard:
    """`wanted` samples a batch, fewer when the artifact's activations (the target's estimate) would not fit the
    memory budget or a batch grows the process more than estimated; MemoryBudgetExceeded when one sample does not.
    The artifact's runtime is opened on one sample first, so what it allocates once is not counted as the batches'."""
    guard = data.within_budget(lambda feed: target.activations(artifact, feed), wanted, f"validating {artifact.label}")
    first = next(data.batches(1))[0]
    target.infer(artifact, first)
    guard.warmed(data.batch_len(first))
    return guard


def coverage_of(artifact: Artifact) -> tuple[float | None, str]:
    """(share of the work that runs in int8, what it is measured on) from details['int8_coverage'], if any."""
    cov = artifact.details.get("int8_coverage") or {}
    for key, unit in (("macs", "MACs"), ("weights", "weights")):
        if isinstance(cov.get(key), (int, float)):
            return float(cov[key]), unit
    return None, ""


def _float_ops(artifact: Artifact) -> str:
    ops = (artifact.details.get("int8_coverage") or {}).get("float_ops") or {}
    return ", ".join(f"{op}×{n}" for op, n in sorted(ops.items())) or "unknown"


def coverage_warning(artifact: Artifact) -> str | None:
    """A warning for an int8/dynamic artifact that is mostly float, naming the float ops."""
    share, unit = coverage_of(artifact)
    if artifact.kind not in ("int8", "dynamic") or share is None or share >= LOW_INT8_COVERAGE:
        return None
    return f"{artifact.label} runs only {share:.0%} of its {unit} in int8; float ops: {_float_ops(artifact)}"


def coverage_gate(artifact: Artifact, minimum: float | None) -> dict[str, str] | None:
    """A failed gate for an int8/dynamic artifact below validate.min_int8_coverage; None when it holds or is unset."""
    share, unit = coverage_of(artifact)
    if minimum is None or share is None or share >= minimum or artifact.kind not in ("int8", "dynamic"):
        return None
    reason = (
        f"int8 coverage {share:.0%} of {unit} is below validate.min_int8_coverage {minimum:.0%} "
        f"(float ops: {_float_ops(artifact)})"
    )
    return {"status": "fail", "reason": reason}


def npu_gate(artifact: Artifact, minimum: float | None) -> dict[str, str] | None:
    """A failed gate for an artifact whose NPU compiler placed less than validate.min_npu_ops of its ops on an
    accelerator it was compiled for (details.npu.accelerators), or could not compile it; None when it holds."""
    accelerators = (artifact.details.get("npu") or {}).get("accelerators") or {}
    if minimum is None or not accelerators:
        return None
    short = []
    for name, report in accelerators.items():
        if "error" in report:
            short.append(f"{name}: not compiled ({report['error']})")
        elif report.get("npu_share") is None or report["npu_share"] < minimum:
            fallback = "; ".join(f"{c['op']}: {c['reason']}" for c in report.get("cpu_fallback", []))
            fallback += more_on_cpu(report)
            share = report.get("npu_share") or 0.0
            short.append(f"{name}: {share:.0%} of ops on the NPU" + (f" (on the CPU: {fallback})" if fallback else ""))
    if not short:
        return None
    return {"status": "fail", "reason": f"below validate.min_npu_ops {minimum:.0%}: " + " | ".join(short)}


def _gate(artifact: Artifact, outputs: list[np.ndarray], ref: Reference, rules: ValidateConfig) -> dict[str, str]:
    drift = artifact.metrics["drift"]
    low = coverage_gate(artifact, rules.min_int8_coverage) or npu_gate(artifact, rules.min_npu_ops)
    if low:
        return low
    shown = f"{ref.metric.label} drift {drift:+.4g} (budget {rules.max_drift:g}, in {ref.metric.label} units)"
    part = artifact.metrics.get("worst_part")
    if part:  # one channel group decides: a whole-tensor figure would have hidden it
        whole = artifact.metrics["metric_whole_outputs"]
        shown += (
            f" on its worst part {part} ({ref.metric.label} {artifact.metrics['metric']:.4g}; whole output {whole:.4g})"
        )
    if matches_reference(outputs, ref):
        return {"status": "pass", "reason": f"outputs equal the reference within fp32 rounding; {shown}"}
    if not np.isfinite(drift):
        return {"status": "fail", "reason": f"{ref.metric.label} is {artifact.metrics['metric']}"}
    if drift <= rules.max_drift + 1e-12:
        return {"status": "pass", "reason": f"{shown} within budget"}
    return {"status": "fail", "reason": f"{shown} exceeds budget"}


def validate_artifact(
    target: Target,
    artifact: Artifact,
    data: Dataset,
    ref: Reference,
    rules: ValidateConfig,
    batch_size: int,
    latency: bool = True,
) -> None:
    """Fill artifact.metrics, .perf and .gate; an artifact that cannot run here is 'skipped', never 'pass'.
    latency=False leaves .perf's latency to time_artifact (a remedy trial: only the one that ships is timed)."""
    if artifact.error:
        artifact.gate = {"status": "error", "reason": f"not built: {artifact.error}"}
        return
    if artifact.skipped:
        artifact.gate = {"status": "skipped", "reason": artifact.skipped}
        return
    if not latency:
        target.scored_only(artifact)
    batches = inference_batches(target, artifact, data, batch_of(artifact, batch_size))
    outputs = run_batched(lambda x: target.infer(artifact, x), data, batches)
    warning = coverage_warning(artifact)
    if warning:
        artifact.details.setdefault("warnings", []).append(warning)
    bad = non_finite(outputs, ref.names)
    if bad:
        artifact.metrics = {"metric_ref": ref.value, "samples": len(data)}
        artifact.gate = {"status": "fail", "reason": f"non-finite outputs: {bad}"}
        return
    artifact.metrics = compare(outputs, ref)
    artifact.metrics["samples"] = len(data)
    if latency:
        time_artifact(target, artifact, data, rules)
    artifact.gate = _gate(artifact, outputs, ref, rules)


def time_artifact(target: Target, artifact: Artifact, data: Dataset, rules: ValidateConfig) -> None:
    """artifact.perf's batch-1 latency (median and spread)."""
    latency = batch1_latency_ms(target, artifact, data, rules.latency_runs)
    artifact.perf.update(latency_ms_batch1=latency.median, latency_iqr_ms_batch1=latency.iqr)
