"""Validation, the driver's own: the reference (from the model as loaded, before any pass) and the gate that
runs every artifact on its own runtime over the validation set and compares it with that reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployc.core import memory
from deployc.core.ort import session
from deployc.core.state import ModelState
from deployc.data.dataset import Dataset
from deployc.data.metrics import Metric, cosine_rows
from deployc.errors import UsageError, failure_text

EXACT_RTOL, EXACT_ATOL = 1e-4, 1e-6  # fp32 rounding between runtimes; atol is relative to the output's scale


@dataclass(frozen=True)
class Reference:
    outputs: list[np.ndarray]
    metric: Metric
    value: float
    targets: np.ndarray  # what a label/custom metric compares against: labels, or the reference's covered output
    names: list[str] = field(default_factory=list)  # one per output
    covered: list[int] = field(default_factory=lambda: [0])  # the outputs the metric reads


def as_arrays(out: Any) -> list[np.ndarray]:
    """A model's output (tensor, or tuples/lists/dicts of them, nested) as a flat list of numpy arrays."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [a for o in out if o is not None for a in as_arrays(o)]
    return [np.asarray(out)]


def _batch_axis(arr: np.ndarray, n: int) -> int | None:
    """Where a batch of n samples sits in an output: axis 0 when it fits, else the first axis of size n."""
    if arr.ndim and arr.shape[0] == n:
        return 0
    return next((i for i, d in enumerate(arr.shape) if d == n), None)


def run_batched(run_batch: Any, data: Dataset, batch_size: int) -> list[np.ndarray]:
    """Every output of `run_batch` over `data` in batches, concatenated with samples first."""
    parts: list[list[np.ndarray]] = []
    for x, _ in data.batches(batch_size):
        n = data.batch_len(x)
        outs = []
        for o in run_batch(x):
            o = np.asarray(o)
            axis = _batch_axis(o, n)
            outs.append(np.moveaxis(o, axis, 0) if axis else (o if axis == 0 else o[None]))
        parts.append(outs)
    counts = {len(p) for p in parts}
    if len(counts) != 1:
        raise ValueError(f"the model returned {sorted(counts)} outputs on different batches")
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def reference_outputs(state: ModelState, data: Dataset, batch_size: int) -> tuple[list[np.ndarray], list[str]]:
    """Outputs (and names) of the model exactly as loaded: the torch module, or onnxruntime for an ONNX model."""
    if state.module is not None:
        import torch

        def run_batch(x: dict[str, np.ndarray]) -> list[np.ndarray]:
            with torch.no_grad():
                return as_arrays(state.module(*[torch.from_numpy(x[s.name]) for s in state.inputs]))

        names: list[str] = []
    else:
        feed = next(data.batches(1))[0]
        per_sample = memory.graph_activations(state.onnx, feed).peak // max(data.batch_len(feed), 1)
        try:
            batch_size = memory.batch_for(per_sample, batch_size, "the reference run", data.fixed_batch)
        except memory.MemoryBudgetExceeded as exc:
            raise UsageError(f"data.validation ({data.source}): {exc}; nothing can be validated") from None
        sess = session(state.onnx)
        names = [o.name for o in sess.get_outputs()]

        def run_batch(x: dict[str, np.ndarray]) -> list[np.ndarray]:
            return sess.run(None, x)

    try:
        outputs = run_batched(run_batch, data, batch_size)
    except Exception as exc:
        ints = [s.name for s in state.inputs if not s.dtype.startswith(("float", "bfloat"))]
        hint = (
            f" (check integer inputs {ints} against what the model accepts, e.g. token ids < vocabulary)"
            if ints
            else ""
        )
        raise UsageError(
            f"data.validation ({data.source}): the model as loaded fails on these samples: {failure_text(exc)}{hint}"
        ) from None
    return outputs, names or [f"output_{i}" for i in range(len(outputs))]


def non_finite(outputs: list[np.ndarray], names: list[str]) -> str | None:
    """'output 'x': 41.0% of values are NaN/Inf (first at sample 3)' for the first output that has any."""
    for name, o in zip(names, outputs):
        if np.issubdtype(o.dtype, np.floating):
            bad = ~np.isfinite(o)
            if bad.any():
                first = int(np.argmax(bad.reshape(len(o), -1).any(axis=1))) if o.ndim else 0
                return f"output '{name}': {bad.mean():.1%} of values are NaN/Inf (first at sample {first})"
    return None


def _covered(output: int | str | None, names: list[str], metric: Metric) -> list[int]:
    if output is None:
        return list(range(len(names))) if metric.similarity else [0]
    if isinstance(output, int):
        if not -len(names) <= output < len(names):
            raise UsageError(
                f"data.output: index {output}, but the model has {len(names)} outputs ({', '.join(names)})"
            )
        return [output % len(names)]
    if output not in names:
        from deployc.core.config import suggest

        raise UsageError(f"data.output: no output '{output}'{suggest(output, set(names))}; outputs: {', '.join(names)}")
    return [names.index(output)]


def class_ids(labels: np.ndarray, scores: np.ndarray, metric: Metric, source: str) -> np.ndarray:
    """Labels as int64 class ids inside the output's class count, or exit 2 saying what is wrong with them."""
    where = f"data.validation ({source}): labels"
    classes = int(np.prod(scores.shape[1:])) if scores.ndim > 1 else 1
    if labels.ndim == 2 and labels.shape[1] == classes > 1 and np.isin(labels, (0, 1)).all():
        raise UsageError(
            f"{where} are one-hot {list(labels.shape)}; {metric.name} needs class ids (argmax over axis 1)"
        )
    if labels.ndim > 1 and int(np.prod(labels.shape[1:])) == 1:
        labels = labels.reshape(len(labels))
    if labels.ndim != 1:
        raise UsageError(f"{where} have shape {list(labels.shape)}; {metric.name} needs one class id per sample")
    if labels.dtype.kind == "f" and np.isfinite(labels).all() and (labels == np.round(labels)).all():
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iub":
        raise UsageError(f"{where} are {labels.dtype}; {metric.name} needs integer class ids")
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise UsageError(
            f"{where}: {int(bad.sum())} of {len(labels)} are outside 0..{classes - 1} (e.g. {labels[i]} at sample {i}); "
            f"the model's output has {classes} classes"
        )
    if metric.name == "top5" and classes <= 5:
        raise UsageError(f"data.metric: top5 on an output of {classes} classes is always 1.0; use top1")
    return labels.astype(np.int64)


def _metric_value(metric: Metric, outputs: list[np.ndarray], ref: Reference) -> float:
    if metric.similarity:
        return float(metric.fn([outputs[i] for i in ref.covered], [ref.outputs[i] for i in ref.covered]))
    first = ref.covered[0]
    return float(metric.fn([outputs[first]] + [o for i, o in enumerate(outputs) if i != first], ref.targets))


def compute_reference(
    state: ModelState, data: Dataset, metric: Metric, batch_size: int, output: int | str | None = None
) -> Reference:
    if metric.needs_labels and data.labels is None:
        raise UsageError(f"data.metric: '{metric.name}' needs labels, and data.validation ({data.source}) has none")
    outputs, names = reference_outputs(state, data, batch_size)
    if not outputs:
        raise UsageError("model: the model as loaded returns no tensor outputs")
    bad = non_finite(outputs, names)
    if bad:
        raise UsageError(f"data.validation ({data.source}): the model as loaded gives non-finite outputs: {bad}")
    covered = _covered(output, names, metric)
    first = outputs[covered[0]]
    use_labels = data.labels is not None and (metric.needs_labels or data.labels.shape == first.shape)
    targets = data.labels if use_labels else first
    if metric.classes:
        targets = class_ids(targets, first, metric, data.source)
    ref = Reference(outputs, metric, 0.0, targets, names, covered)
    try:
        value = _metric_value(metric, outputs, ref)
    except Exception as exc:
        raise UsageError(f"data.metric: '{metric.name}' raised on the reference: {failure_text(exc)}") from None
    if not np.isfinite(value):
        raise UsageError(f"data.metric: '{metric.name}' is {value} for the model as loaded; it must be a finite number")
    return Reference(outputs, metric, value, targets, names, covered)


def compare(outputs: list[np.ndarray], ref: Reference) -> dict[str, Any]:
    """Artifact vs reference: metric, drift, top-1 agreement, and max abs error / cosine per output."""
    if len(outputs) != len(ref.outputs):
        raise ValueError(f"the artifact returns {len(outputs)} outputs, the reference {len(ref.outputs)}")
    value = _metric_value(ref.metric, outputs, ref)
    per_output = {}
    for name, o, r in zip(ref.names, outputs, ref.outputs):
        a, b = o.astype(np.float64).reshape(r.shape), r.astype(np.float64)
        per_output[name] = {
            "max_abs_err": float(np.max(np.abs(a - b))) if a.size else 0.0,
            "cosine": float(cosine_rows(a, b).mean()) if a.ndim else float(a == b),
        }
    covered = [per_output[ref.names[i]] for i in ref.covered]
    result = {
        "metric_ref": ref.value,
        "metric": value,
        "drift": ref.metric.drift(ref.value, value),
        "max_abs_err": max(c["max_abs_err"] for c in covered),
        "cosine": min(c["cosine"] for c in covered),
        "outputs": per_output,
        "metric_outputs": [ref.names[i] for i in ref.covered],
    }
    a, b = outputs[ref.covered[0]], ref.outputs[ref.covered[0]]
    if a.ndim == 2 and a.shape[1] > 1:
        result["agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
    return result


def matches_reference(outputs: list[np.ndarray], ref: Reference) -> bool:
    """Every output equal to the reference within fp32 rounding: such an artifact can never fail its gate."""
    for o, r in zip(outputs, ref.outputs):
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        if o.size != r.size or not np.allclose(o.reshape(r.shape), r, rtol=EXACT_RTOL, atol=EXACT_ATOL * scale):
            return False
    return True
