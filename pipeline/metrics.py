"""Validation metrics: label metrics (top1, top5) and output-similarity metrics (cosine, mse)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deployc.config import BuildConfig
from deployc.errors import UsageError
from deployc.pyimport import import_callable

# fn(outputs, targets) -> float; targets are the labels, or the reference model's first output
MetricFn = Callable[[list[np.ndarray], np.ndarray], float]


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    higher_is_better: bool
    needs_labels: bool

    def drift(self, reference: float, value: float) -> float:
        """Positive when the artifact is worse than the reference, in the metric's own units."""
        return reference - value if self.higher_is_better else value - reference


def _topk(k: int) -> MetricFn:
    def fn(outputs: list[np.ndarray], labels: np.ndarray) -> float:
        logits = outputs[0].reshape(len(outputs[0]), -1)
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        return float((top == labels.reshape(-1, 1)).any(axis=1).mean())

    return fn


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(axis=1) / np.maximum(den, 1e-300), 1.0)


def _cosine(outputs: list[np.ndarray], targets: np.ndarray) -> float:
    return float(cosine_rows(outputs[0], targets).mean())


def _mse(outputs: list[np.ndarray], targets: np.ndarray) -> float:
    return float(np.mean((outputs[0].astype(np.float64) - targets.reshape(outputs[0].shape)) ** 2))


BUILTIN = {
    "top1": Metric("top1", _topk(1), True, True),
    "top5": Metric("top5", _topk(5), True, True),
    "cosine": Metric("cosine", _cosine, True, False),
    "mse": Metric("mse", _mse, False, False),
}


def get_metric(config: BuildConfig) -> Metric:
    name = config.data.metric
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        from deployc.config import suggest

        raise UsageError(
            f"data.metric: unknown metric '{name}'{suggest(name, set(BUILTIN))}; "
            f"use {', '.join(BUILTIN)} or 'file.py:callable'"
        )
    fn = import_callable(name, config.base_dir, "data.metric")
    return Metric(name, fn, bool(getattr(fn, "higher_is_better", True)), bool(getattr(fn, "needs_labels", True)))
