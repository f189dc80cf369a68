"""Validation, the driver's own: the reference (from the model as loaded, before any pass) and the gate that
runs every artifact on its own runtime over the validation set and compares it with that reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployc.core import memory
from deployc.core.config import BuildConfig
from deployc.core.ort import session
from deployc.core.state import ModelState
from deployc.data.contract import integer_inputs_hint
from deployc.data.dataset import Dataset
from deployc.data.metrics import Metric, cosine_rows
from deployc.data.parts import Part, declared_parts, find_parts
from deployc.data.sanity import check_above_chance, check_deterministic, check_not_constant
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
    parts: list[Part] = field(default_factory=list)  # channel groups a similarity metric also judges apart


def flat_outputs(out: Any) -> list[Any]:
    """A model's output (tensor, or tuples/lists/dicts of them, nested) as a flat list, Nones dropped: the order
    every target numbers (and names) the outputs in."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [a for o in out if o is not None for a in flat_outputs(o)]
    return [out]


def as_arrays(out: Any) -> list[np.ndarray]:
    """flat_outputs() as numpy arrays."""
    import torch

    return [o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in flat_outputs(out)]


def _batch_axis(arr: np.ndarray, n: int) -> int | None:
    """Where a batch of n samples sits in an output: axis 0 when it fits, else the first axis of size n."""
    if arr.ndim and arr.shape[0] == n:
        return 0
    return next((i for i, d in enumerate(arr.shape) if d == n), None)


def run_batched(run_batch: Any, data: Dataset, batch_size: int | memory.Guard) -> list[np.ndarray]:
    """Every output of `run_batch` over `data` in batches (of `batch_size`, or as the guard sizes them), concatenated
    with samples first."""
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


def _runner(state: ModelState) -> tuple[Any, list[str]]:
    """A function running the model exactly as loaded on one batch (the torch module, or onnxruntime for an ONNX
    model), and the output names (empty for a torch module)."""
    if state.module is not None:
        import torch

        def run_module(x: dict[str, np.ndarray]) -> list[np.ndarray]:
            with torch.no_grad():
                return as_arrays(state.module(*[torch.from_numpy(x[s.name]) for s in state.inputs]))

        return run_module, []
    sess = session(state.onnx)

    def run_session(x: dict[str, np.ndarray]) -> list[np.ndarray]:
        return sess.run(None, x)

    return run_session, [o.name for o in sess.get_outputs()]


def model_activations(state: ModelState) -> Callable[[dict[str, np.ndarray]], memory.Activations | None]:
    """One sample's activations of the model of `state`: an ONNX graph's from its shapes, a torch module's from
    what its layers return on that sample."""
    if state.module is None:
        return lambda feed: memory.graph_activations(state.onnx, feed)
    names = [spec.name for spec in state.inputs]
    return memory.module_estimate(state.module, names)


def budgeted_batches(state: ModelState, data: Dataset, batch_size: int) -> memory.Guard | int:
    """The reference run's batches, sized to fit the memory budget (core/memory.py) from the activations of one
    sample: an ONNX model's from its shapes, a torch module's from what its layers return on the first sample."""
    if not len(data):
        return batch_size
    estimate = model_activations(state)
    try:
        return data.within_budget(estimate, batch_size, "the reference run")
    except memory.MemoryBudgetExceeded as exc:
        raise UsageError(f"data.validation ({data.source}): {exc}; nothing can be validated") from None


def _reference_run(
    state: ModelState, run_batch: Any, data: Dataset, batch_size: int | memory.Guard
) -> list[np.ndarray]:
    """Every output over the validation set; a failure names the batch's samples and says it is the model's."""
    done = [0]

    def counted(x: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = run_batch(x)
        done[0] += data.batch_len(x)
        return out

    try:
        return run_batched(counted, data, batch_size)
    except memory.MemoryBudgetExceeded as exc:
        raise UsageError(f"data.validation ({data.source}): {exc}; nothing can be validated") from None
    except Exception as exc:
        hint = integer_inputs_hint(state.inputs)
        step = batch_size.size if isinstance(batch_size, memory.Guard) else batch_size
        end = min(done[0] + step, len(data))
        raise UsageError(
            f"data.validation ({data.source}): the model as loaded (your model, before any deployc pass) fails on "
            f"samples {done[0]}..{end - 1}: {failure_text(exc)}{hint}"
        ) from None


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
    if metric.similarity:  # the worst of the covered outputs and of their parts
        outputs = [o.reshape(r.shape) if o.size == r.size else o for o, r in zip(outputs, ref.outputs)]
        got = [outputs[i] for i in ref.covered] + [p.take(outputs) for p in ref.parts]
        want = [ref.outputs[i] for i in ref.covered] + [p.take(ref.outputs) for p in ref.parts]
        return float(metric.fn(got, want))
    first = ref.covered[0]
    return float(metric.fn([outputs[first]] + [o for i, o in enumerate(outputs) if i != first], ref.targets))


def reference_head(ref: Reference, n: int, total: int) -> Reference | None:
    """The reference on the first n of its `total` samples (its metric value recomputed there); None when an
    output does not hold one row per sample (no batch axis found), so it cannot be cut."""
    if any(len(o) != total for o in ref.outputs) or len(ref.targets) != total:
        return None
    outputs = [o[:n] for o in ref.outputs]
    head = Reference(outputs, ref.metric, 0.0, ref.targets[:n], ref.names, ref.covered, ref.parts)
    return Reference(
        outputs, ref.metric, _metric_value(ref.metric, outputs, head), head.targets, ref.names, ref.covered, ref.parts
    )


def reference_for(config: BuildConfig, state: ModelState, data: Dataset, metric: Metric) -> Reference:
    """The reference as every command computes it: data.output, data.output_parts and data.skip_checks applied."""
    d = config.data
    return compute_reference(
        state,
        data,
        metric,
        d.batch_size,
        d.output,
        config.model.outputs,
        skip_checks=frozenset(d.skip_checks),
        output_parts=d.output_parts,
    )


def compute_reference(
    state: ModelState,
    data: Dataset,
    metric: Metric,
    batch_size: int,
    output: int | str | None = None,
    output_names: list[str] | None = None,
    *,
    skip_checks: frozenset[str] = frozenset(),
    output_parts: dict | None = None,
) -> Reference:
    """The model as loaded, run on the validation set and scored; refused (exit 2) when it cannot be a reference
    (sanity.py): non-finite outputs, and unless data.skip_checks says otherwise, outputs that change between two
    runs of the same samples, a covered output that is the same for every sample, or a label metric at chance.
    `output_names` (model.outputs) name the outputs on every target; by default output_0, ... for a torch model,
    the graph's own names for an ONNX one."""
    if metric.needs_labels and data.labels is None:
        raise UsageError(f"data.metric: '{metric.name}' needs labels, and data.validation ({data.source}) has none")
    run_batch, names = _runner(state)
    batches = budgeted_batches(state, data, batch_size)
    outputs = _reference_run(state, run_batch, data, batches)
    if isinstance(batches, memory.Guard):
        batch_size = batches.sizes[0] if batches.sizes else 1  # the determinism check reruns the first batch as run
    names = names or [f"output_{i}" for i in range(len(outputs))]
    if not outputs:
        raise UsageError("model: the model as loaded returns no tensor outputs")
    if output_names:
        if len(output_names) != len(outputs):
            raise UsageError(
                f"model.outputs: names {len(output_names)} output(s) ({', '.join(output_names)}), but the model "
                f"returns {len(outputs)} ({', '.join(names)})"
            )
        names = list(output_names)
    bad = non_finite(outputs, names)
    if bad:
        raise UsageError(f"data.validation ({data.source}): the model as loaded gives non-finite outputs: {bad}")
    covered = _covered(output, names, metric)
    if "nondeterministic" not in skip_checks:
        head = data.take(min(batch_size, len(data)))
        check_deterministic(lambda: run_batched(run_batch, head, batch_size), outputs, names)
    if "constant" not in skip_checks:
        check_not_constant(data, outputs, names, covered, metric, output)
    first = outputs[covered[0]]
    use_labels = data.labels is not None and (metric.needs_labels or data.labels.shape == first.shape)
    targets = data.labels if use_labels else first
    if metric.classes:
        targets = class_ids(targets, first, metric, data.source)
    parts: list[Part] = []
    if metric.similarity and output_parts:
        parts = declared_parts(output_parts, outputs, names)
    elif metric.similarity and "parts" not in skip_checks:
        parts = find_parts(outputs, covered, names)
    ref = Reference(outputs, metric, 0.0, targets, names, covered, parts)
    try:
        value = _metric_value(metric, outputs, ref)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"data.metric: '{metric.name}' raised on the reference: {failure_text(exc)}") from None
    if not np.isfinite(value):
        raise UsageError(f"data.metric: '{metric.name}' is {value} for the model as loaded; it must be a finite number")
    if metric.classes and "chance" not in skip_checks:
        classes = int(np.prod(first.shape[1:])) if first.ndim > 1 else 1
        check_above_chance(metric, value, targets, classes, data.source)
    return Reference(outputs, metric, value, targets, names, covered, parts)


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
    if ref.parts:
        result["parts"] = _part_figures(outputs, ref)
        got = [outputs[i].reshape(ref.outputs[i].shape) for i in ref.covered]
        whole = float(ref.metric.fn(got, [ref.outputs[i] for i in ref.covered]))
        if whole != value:  # a part, not a whole output, decides: say which, and what the whole tensor scored
            result["metric_whole_outputs"] = whole
            pick = min if ref.metric.higher_is_better else max
            result["worst_part"] = pick(result["parts"], key=lambda n: result["parts"][n]["metric"])
    a, b = outputs[ref.covered[0]], ref.outputs[ref.covered[0]]
    if a.ndim == 2 and a.shape[1] > 1:
        result["agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
    return result


def _part_figures(outputs: list[np.ndarray], ref: Reference) -> dict[str, dict[str, Any]]:
    """Per part: the metric, cosine and max abs error on its channels alone, and the reference's scale there."""
    shaped = [o.reshape(r.shape) for o, r in zip(outputs, ref.outputs)]
    figures = {}
    for p in ref.parts:
        a, b = p.take(shaped).astype(np.float64), p.take(ref.outputs).astype(np.float64)
        figures[p.name] = {
            **p.to_json(),
            "metric": float(ref.metric.fn([a], [b])),
            "cosine": float(cosine_rows(a, b).mean()),
            "max_abs_err": float(np.max(np.abs(a - b))) if a.size else 0.0,
        }
    return figures


def matches_reference(outputs: list[np.ndarray], ref: Reference) -> bool:
    """Every output equal to the reference within fp32 rounding: such an artifact can never fail its gate."""
    for o, r in zip(outputs, ref.outputs):
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        if o.size != r.size or not np.allclose(o.reshape(r.shape), r, rtol=EXACT_RTOL, atol=EXACT_ATOL * scale):
            return False
    return True
