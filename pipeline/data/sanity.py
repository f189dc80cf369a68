"""Is the reference worth comparing with? Checks on the model as loaded, before any pass runs.

A gate that compares artifacts with a broken reference passes them all: shuffled labels (top1 at chance, every
artifact at chance too), an output that ignores the input (any artifact that returns the same constant matches it),
or a model that is random at inference (no artifact can match it). Each check is exit 2 naming what to look at,
with an opt-out in data.skip_checks for the rare model meant to be that way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from deployc.data.dataset import Dataset
from deployc.data.metrics import Metric
from deployc.errors import UsageError

DETERMINISM_RTOL = 1e-4  # two runs of one batch through the same process: anything past fp32 noise is randomness
CONSTANT_RTOL = 1e-6  # an output whose samples all sit this close to the first one (relative to its scale)
CHANCE_MARGIN = 0.1  # a classifier must close more than this share of the gap from chance to perfect


def check_deterministic(rerun: Callable[[], list[np.ndarray]], outputs: list[np.ndarray], names: list[str]) -> None:
    """The first batch run again gives the reference's outputs (within fp32 noise)."""
    again = rerun()
    for name, o, a in zip(names, outputs, again):
        if not np.issubdtype(o.dtype, np.floating) or a.shape[1:] != o.shape[1:]:
            continue
        r = o[: len(a)].astype(np.float64)
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        diff = float(np.max(np.abs(a.astype(np.float64) - r))) if r.size else 0.0
        if diff > DETERMINISM_RTOL * max(scale, 1e-12):
            raise UsageError(
                f"model: the model as loaded gives different outputs for the same samples (output '{name}' moves by "
                f"up to {diff:.3g} at scale {scale:.3g} between two runs of the first validation batch): dropout or "
                f"random ops active at inference (F.dropout(training=True), torch.rand in forward)? No artifact can "
                f"match a random reference; make forward() deterministic, or set data.skip_checks: [nondeterministic]"
            )


def _same_samples(data: Dataset) -> bool:
    """Every sample of every batched input equals the first (then a constant output proves nothing)."""
    for name, x in data.inputs.items():
        if data.axes.get(name, 0) is not None and len(x) > 1 and not (x == x[:1]).all():
            return False
    return True


def check_not_constant(
    data: Dataset, outputs: list[np.ndarray], names: list[str], covered: list[int], metric: Metric, output: object
) -> None:
    """No output the metric reads is the same for every sample while the samples differ."""
    n = len(data)
    if n < 2 or _same_samples(data):
        return
    for i in covered:
        o = outputs[i]
        if len(o) != n or not o.size:
            continue
        o64 = o.astype(np.float64)
        spread = float(np.max(np.abs(o64 - o64[:1])))
        scale = float(np.max(np.abs(o64)))
        if spread <= CONSTANT_RTOL * scale or scale == 0.0:
            via = f" (data.output: {output!r})" if output is not None else ""
            raise UsageError(
                f"data.validation ({data.source}): output '{names[i]}'{via}, which data.metric '{metric.label}' reads, "
                f"is the same for all {n} samples (spread {spread:.3g} at scale {scale:.3g}): the model ignores its "
                f"input, and any artifact that returns that constant would pass. Check model.weights (did they "
                f"load?), data.output (does it point at a constant output?), the inputs' scaling (does every "
                f"activation saturate?); set data.skip_checks: [constant] if that is intended"
            )


def chance_level(labels: np.ndarray, classes: int, k: int) -> tuple[float, str]:
    """What guessing scores: the k most common labels' share, or k/classes, whichever is higher, and how."""
    freq = np.sort(np.bincount(labels, minlength=classes))[::-1] / max(len(labels), 1)
    common = float(freq[:k].sum())
    uniform = min(k / max(classes, 1), 1.0)
    if common >= uniform:
        return common, f"always guessing the {'most common label' if k == 1 else f'{k} most common labels'}"
    return uniform, f"guessing uniformly among {classes} classes"


def check_above_chance(metric: Metric, value: float, labels: np.ndarray, classes: int, source: str) -> None:
    """A label metric of the model as loaded clearly above what guessing scores on these labels."""
    k = 5 if metric.name == "top5" else 1
    chance, how = chance_level(labels, classes, k)
    if chance >= 1.0:
        return
    n = len(labels)
    noise = 3 * math.sqrt(chance * (1 - chance) / max(n, 1))
    if value <= chance + max(noise, CHANCE_MARGIN * (1 - chance)):
        raise UsageError(
            f"data.validation ({source}): the model as loaded scores {metric.label} {value:.4f} on {n} samples, "
            f"chance level ({how} scores {chance:.4f}): labels shuffled against the samples, or from another "
            f"split? inputs prepared unlike the model's training data (scale 0-1 vs 0-255, channel order, "
            f"normalisation)? the wrong weights? Every artifact would pass against such a reference; set "
            f"data.skip_checks: [chance] if the model is meant to be untrained"
        )
