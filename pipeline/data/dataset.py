"""Dataset: the samples a build reads, whole arrays with samples first, fed in batches along each input's batch axis."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from deployc.core import memory
from deployc.core.state import TensorSpec


def batch_axis(spec: TensorSpec) -> int | None:
    """Where the model takes the samples of a batch: the dynamic axis named like 'batch', else axis 0 when it is
    dynamic or every axis is fixed, else the first dynamic axis; None for a scalar input (fed as is, shared by
    every sample)."""
    if not spec.shape:
        return None
    named = [i for i, d in enumerate(spec.shape) if isinstance(d, str)]
    default = 0 if not named or named[0] == 0 else named[0]
    return next((i for i in named if "batch" in str(spec.shape[i]).lower()), default)


def sample_shape(spec: TensorSpec) -> tuple[int | str, ...]:
    """The spec's shape without its batch axis: what one sample looks like."""
    axis = batch_axis(spec)
    return spec.shape if axis is None else spec.shape[:axis] + spec.shape[axis + 1 :]


@dataclass(frozen=True)
class Dataset:
    """Whole arrays in memory, samples first (axis 0), one per model input, plus optional labels.

    `axes` says where the model wants each input's batch axis (default 0; None: a 0-d input every sample
    shares); batches() moves the samples there, so only feeding knows about non-leading batch axes.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    axes: dict[str, int | None] = field(default_factory=dict)
    fixed_batch: int | None = None  # the model's batch axis has a fixed size: every batch holds exactly that many

    def _axis(self, name: str) -> int | None:
        return self.axes.get(name, 0)

    def __len__(self) -> int:
        batched = [v for k, v in self.inputs.items() if self._axis(k) is not None]
        return len(batched[0]) if batched else 1

    def take(self, n: int) -> Dataset:
        """The first `n` samples; the same object for the same `n` (and itself when it has no more), so what is
        memoized on it (`digest`) serves every stage and remedy trial that takes them."""
        if n >= len(self):
            return self
        taken = self.__dict__.setdefault("_taken", {})  # the dataclass is frozen; its arrays are never written
        if n not in taken:
            inputs = {k: v if self._axis(k) is None else v[:n] for k, v in self.inputs.items()}
            labels = None if self.labels is None else self.labels[:n]
            taken[n] = Dataset(inputs, labels, self.source, self.axes, self.fixed_batch)
        return taken[n]

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the inputs (names, dtypes, shapes, values) and labels: the key under which the pass cache and
        the stages memoize what they computed from these samples, hashed once (77 MB of samples took 0.2 s a
        stage, several stages a remedy trial)."""
        h = hashlib.sha256()
        named = {f"input:{k}": v for k, v in self.inputs.items()} | {"labels": self.labels}
        for name, value in sorted((k, v) for k, v in named.items() if v is not None):
            value = np.ascontiguousarray(value)
            h.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
            h.update(value.tobytes())
        return h.hexdigest()

    def batch_len(self, batch: dict[str, np.ndarray]) -> int:
        """How many samples a batch from batches() holds."""
        for k, v in batch.items():
            axis = self._axis(k)
            if axis is not None:
                return int(v.shape[axis])
        return 1

    def within_budget(
        self, activations: Callable[[dict[str, np.ndarray]], memory.Activations | None], wanted: int, what: str
    ) -> memory.Guard:
        """Batches of at most `wanted` samples, fewer when `activations` (a graph's estimate on a one-sample feed;
        None: no estimate) says more would not fit the memory budget, or when a batch makes the process grow more
        than that (memory.Guard: a first batch of one sample when there is no estimate or it guessed some sizes);
        MemoryBudgetExceeded naming `what` when one sample does not fit."""
        feed = next(self.batches(1))[0]
        est = activations(feed)
        per_sample = None if est is None else est.peak // max(self.batch_len(feed), 1)
        return memory.Guard(per_sample, wanted, what, self.fixed_batch, probe=est is not None and est.unsized > 0)

    def batches(self, size: int | memory.Guard) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """(feeds, labels) of each batch: `size` samples, or as many as the guard allows, which watches each batch
        (from when it is handed out to when the next is asked for) and shrinks the ones after it."""
        guard = size if isinstance(size, memory.Guard) else None
        start = 0
        while start < len(self):
            step = self.fixed_batch or (guard.size if guard else int(size))
            sl = slice(start, start + step)
            feed = {}
            for k, v in self.inputs.items():
                axis = self._axis(k)
                feed[k] = v if axis is None else (v[sl] if axis == 0 else np.moveaxis(v[sl], 0, axis))
            labels = None if self.labels is None else self.labels[sl]
            mark = memory.Mark.now() if guard else None
            yield feed, labels
            if guard and mark:
                guard.observe(self.batch_len(feed), mark.grown())
            start += step
