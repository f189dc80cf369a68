"""Paired bootstrap of a zoo metric: how far apart two graphs scored on the same validation samples really are.

Every graph of one model is scored on the same resamples (drawn once, with replacement, from the validation
samples), so a difference between two graphs is taken per resample and its spread is the spread of the
difference, not of either metric. A metric of zoo_lib/metrics.py resamples its per-sample parts (fn.parts, fast);
any other metric (deployc's built-ins: top1, cosine) is called again on each resampled set. Percentile intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from zoo_lib.metrics import ratio

ROUNDS = 2000  # resamples; the 2.5/97.5 percentiles move by well under one sample's weight between seeds


@dataclass(frozen=True)
class Scored:
    """One graph's metric on the validation set: its value, its value on each resample, and per-sample scores
    (None for metrics without parts)."""

    value: float
    resampled: np.ndarray
    per_sample: np.ndarray | None


def _take(targets: object, idx: np.ndarray) -> object:
    return [t[idx] for t in targets] if isinstance(targets, (list, tuple)) else np.asarray(targets)[idx]


class Resampler:
    """The resamples of one model's validation set, shared by every graph scored on it."""

    def __init__(self, n: int, rounds: int = ROUNDS, seed: int = 0):
        self.idx = np.random.default_rng(seed).integers(0, n, (rounds, n))

    def score(self, fn: Callable, outputs: list[np.ndarray], targets: object) -> Scored:
        """`fn(outputs, targets)` on the whole set and on each resample."""
        parts = getattr(fn, "parts", None)
        if parts is None:
            values = [fn([o[i] for o in outputs], _take(targets, i)) for i in self.idx]
            return Scored(float(fn(outputs, targets)), np.asarray(values, np.float64), None)
        num, den = (np.asarray(a, np.float64) for a in parts(outputs, targets))
        empty = getattr(fn, "empty", 1.0)
        total_num, total_den = num[self.idx].sum(1), den[self.idx].sum(1)
        resampled = np.where(total_den > 0, total_num / np.where(total_den > 0, total_den, 1.0), empty)
        per_sample = np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)
        return Scored(ratio(num, den, empty), resampled, per_sample)


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of resampled values."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def flips(mine: Scored, base: Scored, higher_is_better: bool) -> tuple[int, int] | None:
    """(samples worse than `base`, samples better) by per-sample score; None without per-sample scores."""
    if mine.per_sample is None or base.per_sample is None:
        return None
    delta = mine.per_sample - base.per_sample
    delta = delta if higher_is_better else -delta
    return int((delta < -1e-12).sum()), int((delta > 1e-12).sum())


def mcnemar_p(worse: int, better: int) -> float:
    """Exact two-sided McNemar p-value of `worse` against `better` discordant samples (binomial, p = 0.5)."""
    from scipy.stats import binomtest

    return 1.0 if worse + better == 0 else float(binomtest(better, worse + better, 0.5).pvalue)
