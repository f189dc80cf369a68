"""The one latency measurement every pass, target, `deployc bench` and benchmark uses.

On a shared machine a burst of load can slow one candidate and not the next, so candidates are timed in
interleaved rounds inside one process, after warm-up: each round runs every candidate a few times in turn.
Results are medians with their spread (interquartile range); ratios are taken within a round (both
sides saw the same load) and then summarised over the rounds; a row whose spread is large is marked
unstable. `clock="thread_cpu"` counts the CPU time of the calling thread instead of wall time: exact for
work that runs on that thread (one intra-op thread), and blind to time spent waiting for a busy core.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Clock = Literal["wall", "thread_cpu", "process_cpu"]
UNSTABLE_SPREAD = 0.25  # IQR / median above this: the figure moved too much between calls to trust one number
_CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    "thread_cpu": time.thread_time,
    "process_cpu": time.process_time,  # every thread's: a runtime's own worker threads count too
}


@dataclass(frozen=True)
class Stats:
    """Median and quartiles of a list of samples (ms, or ratios)."""

    median: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        if len(values) < 2:
            v = values[0] if values else float("nan")
            return cls(v, v, v, len(values))
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), q1, q3, len(values))

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def spread(self) -> float:
        """IQR relative to the median: 0.05 means the middle half of the samples lies within ±2.5%."""
        return self.iqr / self.median if self.median else float("inf")

    @property
    def unstable(self) -> bool:
        return not self.spread <= UNSTABLE_SPREAD

    def to_json(self, digits: int = 4) -> dict[str, Any]:
        return {
            "median": round(self.median, digits),
            "q1": round(self.q1, digits),
            "q3": round(self.q3, digits),
            "iqr": round(self.iqr, digits),
            "n": self.n,
            "unstable": self.unstable,
        }


def load_average() -> float:
    """1-minute load average (0.0 where the platform has none): how busy the machine was."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; os.cpu_count() where there is none, e.g. macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """Where figures were measured: CPU model, core count, load average (timings.json and the reports)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load_average": round(load_average(), 2)}


def warm_up(fn: Callable[[], Any], calls: int, min_seconds: float = 0.0) -> None:
    """Untimed calls: at least `calls` of them and at least `min_seconds` of work (caches, allocators, JIT)."""
    t0 = time.perf_counter()
    done = 0
    while done < calls or time.perf_counter() - t0 < min_seconds:
        fn()
        done += 1


def sample_ms(fn: Callable[[], Any], runs: int, warmup: int = 3, clock: Clock = "wall") -> list[float]:
    """Milliseconds of each of `runs` calls of fn(), after `warmup` untimed calls."""
    warm_up(fn, warmup)
    now = _CLOCKS[clock]
    times = []
    for _ in range(runs):
        t0 = now()
        fn()
        times.append((now() - t0) * 1000)
    return times


def measure(
    fn: Callable[[], Any], runs: int, warmup: int = 3, min_warmup_s: float = 0.0, clock: Clock = "wall"
) -> Stats:
    """One candidate on its own: median and spread of `runs` calls after warm-up."""
    warm_up(fn, warmup, min_warmup_s)
    return Stats.of(sample_ms(fn, runs, 0, clock))


def median_ms(fn: Callable[[], Any], runs: int, warmup: int = 3) -> float:
    return measure(fn, runs, warmup).median


@dataclass(frozen=True)
class Rounds:
    """What interleaved() measured: every sample, each round's median per candidate, and the load."""

    samples: dict[str, tuple[float, ...]]
    round_medians: dict[str, tuple[float, ...]]
    clock: Clock
    per_round: int
    load_before: float
    load_after: float

    @property
    def times(self) -> dict[str, Stats]:
        return {k: Stats.of(list(v)) for k, v in self.samples.items()}

    def percentile(self, name: str, q: float) -> float:
        values = sorted(self.samples[name])
        return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]

    def ratio(self, name: str, baseline: str) -> Stats:
        """name / baseline, taken within each round (both saw the same load), over the rounds."""
        pairs = zip(self.round_medians[name], self.round_medians[baseline])
        return Stats.of([m / b for m, b in pairs if b > 0])

    def unstable(self, name: str, baseline: str | None = None) -> bool:
        """The candidate's own spread, or its spread relative to the baseline, is too large to trust."""
        return self.times[name].unstable or (baseline is not None and self.ratio(name, baseline).unstable)

    def to_json(self, baseline: str | None = None) -> dict[str, Any]:
        return {
            "clock": self.clock,
            "rounds": len(next(iter(self.round_medians.values()), ())),
            "per_round": self.per_round,
            "load_average": [round(self.load_before, 2), round(self.load_after, 2)],
            "times_ms": {k: v.to_json() for k, v in self.times.items()},
            "ratios": {k: self.ratio(k, baseline).to_json() for k in self.samples} if baseline else {},
        }


def interleaved(
    candidates: dict[str, Callable[[], Any]],
    rounds: int = 10,
    per_round: int = 5,
    warmup: int = 3,
    min_warmup_s: float = 0.2,
    clock: Clock = "wall",
) -> Rounds:
    """Time every candidate in `rounds` rounds of `per_round` calls each, the candidates taking turns
    (the order reverses every other round, so none always runs right after another)."""
    load_before = load_average()
    for fn in candidates.values():
        warm_up(fn, warmup, min_warmup_s)
    samples: dict[str, list[float]] = {k: [] for k in candidates}
    medians: dict[str, list[float]] = {k: [] for k in candidates}
    for r in range(rounds):
        for name in list(candidates) if r % 2 == 0 else list(reversed(candidates)):
            times = sample_ms(candidates[name], per_round, 0, clock)
            samples[name] += times
            medians[name].append(statistics.median(times))
    return Rounds(
        {k: tuple(v) for k, v in samples.items()},
        {k: tuple(v) for k, v in medians.items()},
        clock,
        per_round,
        load_before,
        load_average(),
    )
