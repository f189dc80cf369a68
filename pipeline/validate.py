"""Validation, the driver's own: the reference (from the model as loaded, before any pass) and the gate that
runs every artifact on its own runtime over the validation set and compares it with that reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deployc.contracts import Artifact, Target
from deployc.data import Dataset
from deployc.errors import UsageError
from deployc.metrics import Metric, cosine_rows
from deployc.ort import session
from deployc.state import ModelState
from deployc.timing import Stats, measure


@dataclass(frozen=True)
class Reference:
    outputs: list[np.ndarray]
    metric: Metric
    value: float
    targets: np.ndarray  # what the metric compares against: labels, or the reference's first output


def as_arrays(out: Any) -> list[np.ndarray]:
    """A model's output (tensor, tuple, list or dict of them) as a list of numpy arrays."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, dict):
        out = list(out.values())
    return [o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in out]


def run_batched(run_batch: Any, data: Dataset, batch_size: int) -> list[np.ndarray]:
    """Every output of `run_batch` over `data` in batches of `batch_size`, concatenated."""
    parts: list[list[np.ndarray]] = []
    for x, _ in data.batches(batch_size):
        parts.append([np.asarray(o) for o in run_batch(x)])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def reference_outputs(state: ModelState, data: Dataset, batch_size: int) -> list[np.ndarray]:
    """Outputs of the model exactly as loaded: the torch module, or onnxruntime for an ONNX-only model."""
    if state.module is not None:
        import torch

        def run_batch(x: dict[str, np.ndarray]) -> list[np.ndarray]:
            with torch.no_grad():
                return as_arrays(state.module(*[torch.from_numpy(x[s.name]) for s in state.inputs]))
    else:
        sess = session(state.onnx)

        def run_batch(x: dict[str, np.ndarray]) -> list[np.ndarray]:
            return sess.run(None, x)

    return run_batched(run_batch, data, batch_size)


def compute_reference(state: ModelState, data: Dataset, metric: Metric, batch_size: int) -> Reference:
    if metric.needs_labels and data.labels is None:
        raise UsageError(f"data.metric: '{metric.name}' needs labels, and data.validation ({data.source}) has none")
    outputs = reference_outputs(state, data, batch_size)
    use_labels = data.labels is not None and (metric.needs_labels or data.labels.shape == outputs[0].shape)
    targets = data.labels if use_labels else outputs[0]
    return Reference(outputs, metric, float(metric.fn(outputs, targets)), targets)


def compare(outputs: list[np.ndarray], ref: Reference) -> dict[str, float]:
    """Artifact vs reference: metric, drift, top-1 agreement (for class scores), max abs error, cosine."""
    value = float(ref.metric.fn(outputs, ref.targets))
    a, b = outputs[0].astype(np.float64), ref.outputs[0].astype(np.float64)
    result = {
        "metric_ref": ref.value,
        "metric": value,
        "drift": ref.metric.drift(ref.value, value),
        "max_abs_err": float(np.max(np.abs(a - b))) if a.size else 0.0,
        "cosine": float(cosine_rows(a, b).mean()),
    }
    if a.ndim == 2 and a.shape[1] > 1:
        result["agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
    return result


def batch1_latency_ms(target: Target, artifact: Artifact, data: Dataset, runs: int) -> Stats:
    """Wall ms of one batch-1 inference (median and spread), after at least 0.1 s of warm-up runs."""
    sample = {k: v[:1] for k, v in data.inputs.items()}
    return measure(lambda: target.infer(artifact, sample), runs, warmup=3, min_warmup_s=0.1)


def validate_artifact(
    target: Target,
    artifact: Artifact,
    data: Dataset,
    ref: Reference,
    max_drift: float,
    batch_size: int,
    latency_runs: int,
) -> None:
    """Fill artifact.metrics, .perf and .gate; an artifact that cannot run here is 'skipped', never 'pass'."""
    if artifact.error:
        artifact.gate = {"status": "error", "reason": f"not built: {artifact.error}"}
        return
    if artifact.skipped:
        artifact.gate = {"status": "skipped", "reason": artifact.skipped}
        return
    outputs = run_batched(lambda x: target.infer(artifact, x), data, batch_size)
    artifact.metrics = compare(outputs, ref)
    artifact.metrics["samples"] = len(data)
    latency = batch1_latency_ms(target, artifact, data, latency_runs)
    artifact.perf.update(latency_ms_batch1=latency.median, latency_iqr_ms_batch1=latency.iqr)
    drift = artifact.metrics["drift"]
    if not np.isfinite(drift):
        artifact.gate = {"status": "fail", "reason": f"metric is {drift} (non-finite outputs)"}
    elif drift <= max_drift + 1e-12:
        artifact.gate = {"status": "pass", "reason": f"drift {drift:+.4f} within budget {max_drift:.4f}"}
    else:
        artifact.gate = {"status": "fail", "reason": f"drift {drift:+.4f} exceeds budget {max_drift:.4f}"}
