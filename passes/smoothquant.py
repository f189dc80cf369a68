"""SmoothQuant-style activation smoothing of an fp32 ONNX graph before int8 (Xiao et al., 2023): per input
channel c of the activation X that MatMul/Gemm nodes with constant weights read, s_c = max|X_c|^α / max|W_c|^(1−α)
(calibration maxima, W's largest weight of row c over every node reading X). The weights' rows are multiplied by
s and X is divided by it, which moves the outlier channels' range from the per-tensor activation scale into the
per-channel weight scales. The division is folded into X's producer when only these nodes read X and it is a
LayerNormalization (its scale and bias, reached through reshapes that keep the channel axis) or a MatMul/Gemm with
constant weights; otherwise it is a Mul node in front of the nodes (float, elementwise). The fp32 graph computes
the same numbers: checked on calibration samples, within 1e-4 of each output's largest value.

Written here rather than taken from a library: onnxruntime's `SmoothQuant` option calls Intel neural-compressor
2.x, and onnx-neural-compressor's Smoother pins numpy < 2 and pulls in transformers, for a ~150-line transform.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployc.data.dataset import Dataset
from deployc.passes.activations import last_axis_absmax, streamed
from deployc.passes.onnx_numerics import Samples, batched_outputs, batches_mismatch, pinned
from deployc.passes.onnx_util import copied, producers
from deployc.passes.onnx_util import weighted_matmul_inputs as smoothable

SMOOTHED = ("MatMul", "Gemm")
MUL_SUFFIX = "/smoothquant"  # names the Mul nodes it inserts, so the quantizer keeps them float
EQUAL_RTOL = 1e-4
_SCALE_RANGE = (1e-5, 1e5)


@dataclass(frozen=True)
class Smoothing:
    """What `smooth` did: activations smoothed, and how each division by s was realised."""

    alpha: float
    groups: int = 0
    folded: dict[str, int] = field(default_factory=dict)  # producer op type → activations folded into it
    muls: int = 0  # Mul nodes inserted (float, in front of the weighted ops)
    # outputs of the nodes it rewrote or inserted: with everything downstream of them, the tensors whose values
    # differ from the fp32 graph's (the rest are computed as before: their calibrated ranges still hold)
    changed: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "activations": self.groups,
            "folded": dict(sorted(self.folded.items())),
            "muls": self.muls,
        }


def _attr(node: Any, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def channel_absmax(
    proto: Any, names: list[str], data: Dataset, rewrites: tuple[Any, ...] = ()
) -> dict[str, np.ndarray]:
    """max |value| per last-axis channel of each named tensor over `data` (streamed in batches that fit the memory
    budget: nothing is kept); read off the calibration statistics of the same samples when they hold it, measured
    on `proto` or on one of `rewrites`: value-preserving rewrites of it that keep these tensors' names (its
    quantizer pre-processing, which is the graph calibration measures)."""
    from deployc.passes.calibration import memoized_channel_absmax

    for graph in (proto, *rewrites):
        out = memoized_channel_absmax(graph, data, names)  # smoothing comes after calibration: no import cycle
        if out is not None:
            return out
    out = {}
    for values in streamed(proto, names, data, "smoothing's activation ranges"):
        for name, value in values.items():
            out[name] = last_axis_absmax(value, out.get(name))
    return out


def _rows(node: Any, w: np.ndarray) -> np.ndarray:
    """The weight laid out [input channels, outputs]."""
    return w.T if node.op_type == "Gemm" and _attr(node, "transB", 0) else w


def smoothing_scales(x_max: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """s per input channel; 1 where a channel never moved or has no weight."""
    w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0).astype(np.float64)
    x_max = x_max.astype(np.float64)
    live = (x_max > 0) & (w_max > 0)
    s = np.ones_like(x_max)
    s[live] = x_max[live] ** alpha / w_max[live] ** (1 - alpha)
    return np.clip(s, *_SCALE_RANGE)


class _Graph:
    """The graph being rewritten: its initializers as arrays (edited in place) and who reads what."""

    def __init__(self, proto: Any):
        from onnx import numpy_helper

        self.proto = proto
        self.arrays = {i.name: numpy_helper.to_array(i).copy() for i in proto.graph.initializer}
        self.producer = producers(proto.graph.node)
        self.readers: dict[str, list[Any]] = collections.defaultdict(list)
        for n in proto.graph.node:
            for i in n.input:
                self.readers[i].append(n)
        self.outputs = {o.name for o in proto.graph.output}

    def only_read_by(self, tensor: str, nodes: list[Any]) -> bool:
        return tensor not in self.outputs and {id(r) for r in self.readers[tensor]} == {id(n) for n in nodes}

    def scale(self, name: str, factor: np.ndarray) -> None:
        """Multiply an initializer by `factor` (broadcast)."""
        self.arrays[name] = (self.arrays[name] * factor).astype(self.arrays[name].dtype)

    def own_copy(self, node: Any, index: int) -> str:
        """node.input[index] as an initializer only `node` reads (tied weights are not scaled twice)."""
        name = node.input[index]
        if len(self.readers[name]) > 1:
            new = f"{name}{MUL_SUFFIX}/{node.name or node.output[0]}"
            self.arrays[new] = self.arrays[name].copy()
            self.readers[name].remove(node)
            self.readers[new].append(node)
            node.input[index] = new
            name = new
        return name

    def fold_target(self, tensor: str, nodes: list[Any], channels: int) -> Any | None:
        """The producer that can absorb a division of `tensor`'s channels, through channel-keeping reshapes."""
        while self.only_read_by(tensor, nodes):
            p = self.producer.get(tensor)
            if p is None:
                return None
            if p.op_type == "LayerNormalization" and _attr(p, "axis", -1) == -1 and self._const_vector(p, 1, channels):
                has_bias = len(p.input) > 2 and p.input[2]
                return p if not has_bias or self._const_vector(p, 2, channels) else None
            if (
                p.op_type in SMOOTHED
                and p.input[1] in self.arrays
                and not (p.op_type == "Gemm" and _attr(p, "transA", 0))
            ):
                out_axis = 0 if p.op_type == "Gemm" and _attr(p, "transB", 0) else 1
                w = self.arrays[p.input[1]]
                bias_ok = len(p.input) < 3 or not p.input[2] or self._const_vector(p, 2, channels)
                return p if w.ndim == 2 and w.shape[out_axis] == channels and bias_ok else None
            if not self._keeps_last_axis(p, channels):
                return None
            tensor, nodes = p.input[0], [p]
        return None

    def _const_vector(self, node: Any, index: int, channels: int) -> bool:
        a = self.arrays.get(node.input[index]) if index < len(node.input) else None
        return a is not None and a.shape == (channels,)

    def _keeps_last_axis(self, node: Any, channels: int) -> bool:
        """A Reshape to a constant shape ending in `channels`: each last-axis vector stays whole when the input's
        last axis has that size too, which the producer found above it guarantees (its scale or weight's width)."""
        if node.op_type != "Reshape":
            return False
        shape = self.arrays.get(node.input[1])
        return shape is not None and shape.size > 0 and int(shape.reshape(-1)[-1]) == channels

    def fold(self, producer: Any, inv: np.ndarray) -> None:
        if producer.op_type == "LayerNormalization":
            for index in (1, 2):
                if index < len(producer.input) and producer.input[index]:
                    self.scale(self.own_copy(producer, index), inv)
            return
        transposed = producer.op_type == "Gemm" and _attr(producer, "transB", 0)
        self.scale(self.own_copy(producer, 1), inv[:, None] if transposed else inv[None, :])
        if len(producer.input) > 2 and producer.input[2]:
            self.scale(self.own_copy(producer, 2), inv)

    def finish(self) -> Any:
        from onnx import numpy_helper

        used = {i for n in self.proto.graph.node for i in n.input}
        del self.proto.graph.initializer[:]
        self.proto.graph.initializer.extend(
            numpy_helper.from_array(a, name) for name, a in self.arrays.items() if name in used
        )
        return self.proto


def smooth(
    proto: Any, data: Dataset, alpha: float, check_samples: int = 4, rewrites: tuple[Any, ...] = ()
) -> tuple[Any, Smoothing]:
    """A copy of the fp32 graph `proto` smoothed with `alpha` on the activations of `data` (see module docstring);
    `rewrites`: see channel_absmax."""
    from onnx import helper

    out = copied(proto)
    groups = smoothable(out)
    if not groups or len(data) == 0:
        return proto, Smoothing(alpha)
    x_max = channel_absmax(proto, list(groups), data, rewrites)
    g = _Graph(out)
    folded: collections.Counter[str] = collections.Counter()
    muls: list[tuple[int, Any]] = []
    changed: set[str] = set()
    for x, nodes in groups.items():
        weights = [_rows(n, g.arrays[n.input[1]]) for n in nodes]
        if any(w.shape[0] != x_max[x].shape[0] for w in weights):
            continue  # the weight's rows are not the activation's last axis (a broadcasting MatMul)
        s = smoothing_scales(x_max[x], weights, alpha)
        for n in nodes:
            transposed = n.op_type == "Gemm" and _attr(n, "transB", 0)
            g.scale(g.own_copy(n, 1), s[None, :] if transposed else s[:, None])
        changed.update(n.output[0] for n in nodes)
        inv = (1.0 / s).astype(np.float32)
        target = g.fold_target(x, nodes, len(s))
        if target is not None:
            g.fold(target, inv)
            folded[target.op_type] += 1
            changed.add(target.output[0])
            continue
        name = f"{x}{MUL_SUFFIX}"
        g.arrays[f"{name}/scale"] = inv
        mul = helper.make_node("Mul", [x, f"{name}/scale"], [f"{name}/out"], name=name)
        changed.add(mul.output[0])
        for n in nodes:
            n.input[0] = mul.output[0]
        muls.append((min(list(out.graph.node).index(n) for n in nodes), mul))
    for at, mul in sorted(muls, key=lambda t: -t[0]):  # from the back, so earlier positions stay valid
        out.graph.node.insert(at, mul)
    result = g.finish()
    _check_equal(proto, result, data, check_samples)
    return result, Smoothing(alpha, sum(folded.values()) + len(muls), dict(folded), len(muls), frozenset(changed))


def _check_equal(before: Any, after: Any, data: Dataset, n: int) -> None:
    """The smoothed graph must compute the fp32 graph's numbers: a difference is a bug of this transform."""
    feeds = pinned(Samples(data.take(n)), before, None, "smoothquant's output check")  # batches the budget sizes
    why = batches_mismatch(list(batched_outputs(before, feeds)), batched_outputs(after, feeds), rtol=EQUAL_RTOL)
    if why is not None:
        raise AssertionError(f"smoothquant changed the fp32 graph's outputs: {why}")
