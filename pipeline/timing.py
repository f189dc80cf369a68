"""The one latency measurement every pass, target and benchmark uses: median wall ms after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def sample_ms(fn: Callable[[], Any], runs: int, warmup: int = 3) -> list[float]:
    """Wall ms of each of `runs` calls of fn(), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def median_ms(fn: Callable[[], Any], runs: int, warmup: int = 3) -> float:
    return statistics.median(sample_ms(fn, runs, warmup))
