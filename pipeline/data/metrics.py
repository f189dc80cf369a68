"""Validation metrics: label metrics (top1, top5) and output-similarity metrics (cosine, mse).

Drift is always in the metric's own units (top1: a fraction of samples; cosine: cosine; mse: squared output
units), reference − artifact for higher-is-better metrics, artifact − reference otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deployc.core.config import BuildConfig, metric_label
from deployc.core.pyimport import import_callable
from deployc.errors import UsageError

# fn(outputs, targets) -> float. Label and custom metrics: outputs[0] is the output the metric reads, targets
# the labels (or that output of the reference). Similarity metrics: both are lists of every covered output.
MetricFn = Callable[[list[np.ndarray], object], float]


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    higher_is_better: bool
    needs_labels: bool
    similarity: bool = False  # compares the artifact's outputs with the reference's (all covered outputs)
    classes: bool = False  # labels are integer class ids inside the output's class count (checked before work)

    @property
    def label(self) -> str:
        """What gate reasons call it: the callable's name, not the file path a custom metric was given by."""
        return metric_label(self.name)

    def drift(self, reference: float, value: float) -> float:
        """Positive when the artifact is worse than the reference, in the metric's own units."""
        return reference - value if self.higher_is_better else value - reference


def _topk(k: int) -> MetricFn:
    def fn(outputs: list[np.ndarray], labels: np.ndarray) -> float:
        logits = outputs[0].reshape(len(outputs[0]), -1)
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        return float((top == labels.reshape(-1, 1)).any(axis=1).mean())

    return fn


def cosine_rows(a: np.ndarray, b: np.ndarray, floor: float | None = None) -> np.ndarray:
    """Per-sample cosine similarity, stable on near-zero rows.

    Rows whose norms are both below `floor` (default: 1e-3 of the RMS row norm of `b`, the reference) are scored
    by distance instead, 1 − |a−b|² / (2·floor²): the cosine of two vectors of size 1e-7 is noise (an exact fp32
    artifact would otherwise fail its gate), their distance relative to the output's scale is not.
    """
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    if floor is None:
        rms = float(np.sqrt(np.mean(nb**2))) if nb.size else 0.0
        floor = max(1e-3 * rms, 1e-30)
    small = (na < floor) & (nb < floor)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-300)
    near = 1.0 - np.linalg.norm(a - b, axis=1) ** 2 / (2 * floor**2)
    return np.clip(np.where(small, near, cos), -1.0, 1.0)


def _as_list(targets: object) -> list[np.ndarray]:
    return list(targets) if isinstance(targets, (list, tuple)) else [np.asarray(targets)]


def _cosine(outputs: list[np.ndarray], targets: object) -> float:
    """The worst covered output's mean per-sample cosine: one broken output is not averaged away."""
    refs = _as_list(targets)
    return min(float(cosine_rows(o, r.reshape(o.shape)).mean()) for o, r in zip(outputs, refs))


def _mse(outputs: list[np.ndarray], targets: object) -> float:
    """The worst covered output's mean squared error."""
    refs = _as_list(targets)
    return max(float(np.mean((o.astype(np.float64) - r.reshape(o.shape)) ** 2)) for o, r in zip(outputs, refs))


BUILTIN = {
    "top1": Metric("top1", _topk(1), True, True, classes=True),
    "top5": Metric("top5", _topk(5), True, True, classes=True),
    "cosine": Metric("cosine", _cosine, True, False, similarity=True),
    "mse": Metric("mse", _mse, False, False, similarity=True),
}


def get_metric(config: BuildConfig) -> Metric:
    name = config.data.metric
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        from deployc.core.config import suggest

        raise UsageError(
            f"data.metric: unknown metric '{name}'{suggest(name, set(BUILTIN))}; "
            f"use {', '.join(BUILTIN)} or 'file.py:callable'"
        )
    fn = import_callable(name, config.base_dir, "data.metric")
    flags = {attr: _flag(fn, name, attr) for attr in ("higher_is_better", "needs_labels")}
    return Metric(name, _one_number(fn, name), flags["higher_is_better"], flags["needs_labels"])


def _flag(fn: object, name: str, attr: str) -> bool:
    """A custom metric's `higher_is_better` / `needs_labels`: a real bool (default True). The string 'False' is
    truthy: taken as given, it would turn an error metric into a score and pass any drift."""
    value = getattr(fn, attr, True)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise UsageError(
        f"data.metric: '{name}' sets {attr} = {value!r} ({type(value).__name__}); it must be True or False"
    )


def as_number(value: object) -> float | None:
    """`value` as a float when it is one real number (Python or numpy scalar, 0-d array or tensor), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy scalars, 0-d arrays and tensors
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _one_number(fn: MetricFn, name: str) -> MetricFn:
    """The custom metric, held to its contract on every call: one real number, or exit 2 naming it."""

    def checked(outputs: list[np.ndarray], targets: object) -> float:
        value = fn(outputs, targets)
        number = as_number(value)
        if number is None:
            shape = getattr(value, "shape", None)
            shown = f"{type(value).__name__}" + (f" of shape {list(shape)}" if shape is not None else f" {value!r:.60}")
            raise UsageError(
                f"data.metric: '{name}' returned a {shown}; a metric returns one real number (reduce it, e.g. .mean())"
            )
        return number  # a non-finite value fails the reference (exit 2) or the artifact's gate, not here

    return checked
