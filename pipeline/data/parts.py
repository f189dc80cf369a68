"""Parts of an output judged apart by the similarity metrics: channel groups whose scales differ by orders of
magnitude (a detector's box pixels beside its 0-1 class scores), or channel ranges the user names.

One cosine or MSE over the whole tensor is dominated by its large channels: YOLOv8n's int8 output with every class
score zero still has cosine 0.9996 against the reference. Judged per part, the scores' cosine is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deployc.errors import UsageError

GROUP_GAP = 100.0  # channels whose scales (RMS) sit this far apart, with no channel in between, are two parts
DEAD = 1e-6  # channels below this share of the output's largest scale carry rounding noise only: not a part
MAX_CHANNELS = 4096  # an axis longer than this is positions, not channels
MAX_PARTS = 8


@dataclass(frozen=True)
class Part:
    """Channels `index` (along axis `axis`, samples first) of output number `output`."""

    output: int
    name: str
    axis: int
    index: tuple[int, ...]
    scale: float  # the reference's RMS over these channels

    def take(self, arrays: list[np.ndarray]) -> np.ndarray:
        return np.take(arrays[self.output], self.index, axis=self.axis)

    def to_json(self) -> dict:
        return {"output": self.output, "axis": self.axis, "channels": _channels_text(self.index), "scale": self.scale}


def _channels_text(index: tuple[int, ...]) -> str:
    if index == tuple(range(index[0], index[-1] + 1)):
        return f"{index[0]}-{index[-1]}" if len(index) > 1 else str(index[0])
    return ",".join(map(str, index[:4])) + (f" (+{len(index) - 4})" if len(index) > 4 else "")


def _channel_scales(o: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(o.astype(np.float64, copy=False), axis, 0).reshape(o.shape[axis], -1)
    return np.sqrt(np.mean(moved**2, axis=1))


def _groups(scales: np.ndarray) -> tuple[list[list[int]], float]:
    """Channel index groups split at gaps of GROUP_GAP× between consecutive sorted scales, and the widest gap;
    ([], 1.0) when there is no such gap."""
    top = float(scales.max())
    if top <= 0:
        return [], 1.0
    live = np.flatnonzero(scales > DEAD * top)
    order = live[np.argsort(scales[live], kind="stable")]
    ratios = scales[order[1:]] / scales[order[:-1]]
    wide = np.flatnonzero(ratios >= GROUP_GAP)
    if not wide.size:
        return [], 1.0
    cuts = sorted(int(c) + 1 for c in wide[np.argsort(-ratios[wide], kind="stable")][: MAX_PARTS - 1])
    bands = [sorted(map(int, b)) for b in np.split(order, cuts)]
    dead = [int(i) for i in np.flatnonzero(scales <= DEAD * top)]
    bands[0] = sorted(bands[0] + dead)  # near-zero channels go with the smallest live ones
    return bands, float(ratios[wide].max())


def find_parts(outputs: list[np.ndarray], covered: list[int], names: list[str]) -> list[Part]:
    """Parts of the covered outputs whose channels (axis 1 or the last axis) fall into bands of scale apart by
    GROUP_GAP×; the axis with the wider gap wins. None for an output of one scale."""
    parts: list[Part] = []
    for i in covered:
        o = outputs[i]
        if o.ndim < 2 or not np.issubdtype(o.dtype, np.floating):
            continue
        best: tuple[float, int, list[list[int]], np.ndarray] | None = None
        for axis in sorted({1, o.ndim - 1}):
            if not 2 <= o.shape[axis] <= MAX_CHANNELS:
                continue
            scales = _channel_scales(o, axis)
            groups, gap = _groups(scales)
            if groups and (best is None or gap > best[0]):
                best = (gap, axis, groups, scales)
        if best is None:
            continue
        _, axis, groups, scales = best
        for g in groups:
            index = tuple(g)
            name = f"{names[i]}[axis {axis}: {_channels_text(index)}]"
            parts.append(Part(i, name, axis, index, float(np.sqrt(np.mean(scales[g] ** 2)))))
    return parts


def declared_parts(
    declared: dict[str, dict[str, tuple[int, int]]], outputs: list[np.ndarray], names: list[str]
) -> list[Part]:
    """data.output_parts: named channel ranges [start, stop) along axis 1 of named outputs."""
    parts: list[Part] = []
    for out_name, ranges in declared.items():
        if out_name not in names:
            from deployc.core.config import suggest

            raise UsageError(
                f"data.output_parts.{out_name}: no output '{out_name}'{suggest(out_name, set(names))}; "
                f"outputs: {', '.join(names)}"
            )
        i = names.index(out_name)
        o = outputs[i]
        size = o.shape[1] if o.ndim > 1 else 0
        for part_name, (start, stop) in ranges.items():
            if not 0 <= start < stop <= size:
                raise UsageError(
                    f"data.output_parts.{out_name}.{part_name}: [{start}, {stop}) is not a channel range of "
                    f"'{out_name}', whose axis 1 has {size} channels (shape {list(o.shape)}, samples first)"
                )
            index = tuple(range(start, stop))
            scale = float(np.sqrt(np.mean(np.take(o, index, axis=1).astype(np.float64) ** 2)))
            parts.append(Part(i, f"{out_name}.{part_name}", 1, index, scale))
    return parts
