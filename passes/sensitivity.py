"""Per-layer quantization sensitivity: how much error each layer adds when it runs in int8.

Two measurements, both on real samples through onnxruntime:
- `activation_errors`: one run of the fp32 and the int8 graph with every layer output exposed; the
  error of each output, normalised per channel (a crushed small channel is not hidden by a big one).
- `single_layer_errors`: quantize one layer at a time and measure the model output's error; what the
  tuner ranks fallback candidates by, since a layer's own damage is not diluted by its neighbours'.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployc.core.ort import session
from deployc.data.dataset import Dataset
from deployc.passes.onnx_util import producers

# ops onnxruntime's QDQ quantizer gives int8 weights or activations; the candidates for fp32 fallback
QUANTIZABLE = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Add",
        "Mul",
        "Concat",
        "AveragePool",
        "MaxPool",
        "GlobalAveragePool",
        "Resize",
        "Softmax",
        "Gather",
        "Where",
        "Split",
        "LayerNormalization",
        "InstanceNormalization",
    }
)


@dataclass(frozen=True)
class LayerError:
    node: str  # ONNX node name: what quantize.exclude takes
    op_type: str
    layer: str  # the torch module it came from (from its weight's name) or the node name
    error: float  # normalised squared error, mean over channels
    added: float = 0.0  # error minus the largest error already present in its inputs

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "node": self.node,
            "op_type": self.op_type,
            "error": self.error,
            "added": self.added,
        }


def layer_name(proto: Any, node: Any) -> str:
    """'node_Conv_12 (layer1.conv1)' when the node reads a named weight, else the node name."""
    inits = {i.name for i in proto.graph.initializer}
    weight = next((i for i in node.input[1:] if i in inits and i.endswith(".weight")), None)
    return f"{node.name} ({weight.removesuffix('.weight')})" if weight else node.name


def channel_nmse(ref: np.ndarray, got: np.ndarray) -> float:
    """Squared error over squared reference, per channel (axis 1), averaged over channels."""
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    if ref.ndim < 2:
        ref, got = ref.reshape(-1, 1), got.reshape(-1, 1)
    axes = tuple(i for i in range(ref.ndim) if i != 1)
    err = ((ref - got) ** 2).sum(axis=axes)
    power = (ref**2).sum(axis=axes)
    live = power > 1e-12 * max(float(power.max()), 1e-30)  # dead channels carry no signal to lose
    if not live.any():
        return float(err.sum() > 0)
    return float(np.mean(err[live] / power[live]))


def _with_outputs(proto: Any, names: list[str]) -> Any:
    from onnx import TensorProto, helper

    out = type(proto)()
    out.CopyFrom(proto)
    have = {o.name for o in out.graph.output}
    types = tensor_types(proto)
    out.graph.output.extend(
        helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), None) for n in names if n not in have
    )
    return out


def tensor_types(proto: Any) -> dict[str, int]:
    """Element type of every tensor onnx's shape inference can type (a Gather on a shape gives int64)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # a graph inference cannot type: fall back to what the file declares
        inferred = proto
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values if v.type.tensor_type.elem_type}


def _float_outputs(proto: Any) -> dict[str, Any]:
    """Layer output tensor → its node, for the nodes that compute on activations (not constants or Q/DQ)."""
    skip = {
        "Constant",
        "QuantizeLinear",
        "DequantizeLinear",
        "Shape",
        "Reshape",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Cast",
    }
    return {n.output[0]: n for n in proto.graph.node if n.op_type not in skip and n.output}


def layer_outputs(proto: Any, names: list[str], data: Dataset, batch: int = 64) -> dict[str, np.ndarray]:
    """The named intermediate tensors of `proto` over `data` (graph unoptimised, so every name survives)."""
    sess = session(_with_outputs(proto, names), optimize=False, spin=False)
    feeds = {i.name for i in sess.get_inputs()}
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for x, _ in data.batches(batch):
        for name, value in zip(names, sess.run(names, {k: v for k, v in x.items() if k in feeds})):
            parts[name].append(value)
    return {n: np.concatenate(v) if v[0].ndim else np.stack(v) for n, v in parts.items()}  # 0-d: one per batch


def _consumer_view(int8: Any) -> dict[str, str]:
    """Float tensor name → the int8 graph's tensor its consumers read (after its Q→DQ pair, if any)."""
    view = {o: o for n in int8.graph.node for o in n.output}
    q_of = {n.input[0]: n.output[0] for n in int8.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in int8.graph.node if n.op_type == "DequantizeLinear"}
    for t, q in q_of.items():
        if q in dq_of:
            view[t] = dq_of[q]
    return view


CHUNK = 1 << 18  # values taken to float64 at a time: the scratch stays in cache


def _squared_sums(ref: np.ndarray, got: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per index of axis 1: the sums of (ref - got)² and of ref², in float64, a chunk of whole rows at a time (no
    float64 copy of the batch: the ranking compares every tensor of both graphs)."""
    pre, channels = ref.shape[0], ref.shape[1]
    post = ref.size // max(pre * channels, 1)
    ref3, got3 = ref.reshape(pre, channels, post), np.ascontiguousarray(got).reshape(pre, channels, post)
    rows = max(1, CHUNK // max(channels * post, 1))
    scratch = np.empty(min(pre, rows) * channels * post, np.float64)
    err, power = np.zeros(channels, np.float64), np.zeros(channels, np.float64)
    for r in range(0, pre, rows):
        a, b = ref3[r : r + rows], got3[r : r + rows]
        buf = scratch[: a.size].reshape(a.shape)
        np.subtract(a, b, out=buf, dtype=np.float64)
        np.square(buf, out=buf)
        err += buf.sum(axis=(0, 2))
        np.square(a, out=buf, dtype=np.float64)
        power += buf.sum(axis=(0, 2))
    return err, power


class _ChannelError:
    """channel_nmse accumulated batch by batch: per-channel sums of squared error and of squared reference."""

    def __init__(self) -> None:
        self.err: np.ndarray | None = None
        self.power: np.ndarray | None = None

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        got = got.reshape(ref.shape)
        if ref.ndim < 2:
            ref, got = ref.reshape(-1, 1), got.reshape(-1, 1)
        err, power = _squared_sums(ref, got)
        if self.err is None or self.power is None:
            self.err, self.power = err, power
        elif self.err.shape != err.shape:  # axis 1 is no channel axis (its size follows the batch): one channel
            self.err, self.power = (
                np.atleast_1d(self.err.sum() + err.sum()),
                np.atleast_1d(self.power.sum() + power.sum()),
            )
        else:
            self.err += err
            self.power += power

    def value(self) -> float:
        if self.err is None or self.power is None:
            return 0.0
        live = self.power > 1e-12 * max(float(self.power.max()), 1e-30)  # dead channels carry no signal to lose
        if not live.any():
            return float(self.err.sum() > 0)
        return float(np.mean(self.err[live] / self.power[live]))


def _streamed_errors(fp32: Any, int8: Any, names: list[str], seen: dict[str, str], data: Dataset) -> dict[str, float]:
    """channel_nmse of each fp32 tensor against the int8 graph's `seen[tensor]`, over `data` in batches that hold
    both graphs' tensors within the memory budget (the same sums as one run on every sample)."""
    from deployc.passes.activations import batch_size, per_sample_bytes, side_by_side, streamed

    int8_names = sorted({seen[t] for t in names})
    # both graphs' tensors, and float64 copies of one tensor pair while it is compared
    need = per_sample_bytes(fp32, names, data, scratch=4) + per_sample_bytes(int8, int8_names, data)
    size = batch_size(need, data, "the fallback ranking (fp32 and int8 activations)")
    acc = {t: _ChannelError() for t in names}
    fp32_batches = streamed(fp32, names, data, "the fallback ranking", size)
    int8_batches = streamed(int8, int8_names, data, "the fallback ranking", size)

    def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], t: str) -> None:  # a tensor's own sums only
        acc[t].add(ref[t], got[seen[t]])

    for ref, got in zip(fp32_batches, int8_batches):
        side_by_side(functools.partial(compare, ref, got), names)  # the tensors' sums side by side
        del ref, got
    return {t: a.value() for t, a in acc.items()}


def activation_errors(fp32: Any, int8: Any, data: Dataset) -> list[LayerError]:
    """Per-layer error between the fp32 and the int8 graph on `data`, the layers adding most error first.

    Layers are matched by output tensor name (onnxruntime's QDQ quantizer keeps the float names, though
    it may fuse e.g. Conv+Relu so the int8 producer is the Conv) and compared where their consumers read
    them, after the tensor's QuantizeLinear→DequantizeLinear pair. Streamed: a batch at a time (memory budget).
    """
    skip = {"QuantizeLinear", "DequantizeLinear"}
    producer8 = producers(n for n in int8.graph.node if n.op_type not in skip)
    producer32 = producers(fp32.graph.node)
    seen = _consumer_view(int8)
    types = tensor_types(fp32)
    floats = {1, 10, 11, 16}  # float, float16, double, bfloat16: integer tensors (shapes, indices) carry no error
    names = [t for t in _float_outputs(fp32) if t in producer8 and types.get(t, 1) in floats]
    errors = _streamed_errors(fp32, int8, names, seen, data)

    def upstream(tensor: str, depth: int = 0) -> float:  # error already present in a tensor, through unmeasured ops
        if tensor in errors:
            return errors[tensor]
        node = producer32.get(tensor)
        if node is None or depth > 64:
            return 0.0
        return max((upstream(i, depth + 1) for i in node.input), default=0.0)

    by_name = {n.name: n for n in fp32.graph.node}
    result = []
    for t in names:
        node = by_name.get(producer8[t].name, producer32[t])
        before = max((upstream(i) for i in producer32[t].input), default=0.0)
        result.append(LayerError(node.name, node.op_type, layer_name(fp32, node), errors[t], errors[t] - before))
    return sorted(result, key=lambda e: (-e.added, -e.error, e.node))


def single_layer_errors(
    fp32: Any, data: Dataset, quantize: Any, candidates: list[str] | None = None
) -> list[LayerError]:
    """Quantize one layer at a time (`quantize(proto, only=[node])`) and measure the model output's error.

    Worst first. `candidates` defaults to every node of a quantizable op type.
    """
    nodes = {n.name: n for n in fp32.graph.node}
    names = candidates if candidates is not None else [n.name for n in fp32.graph.node if n.op_type in QUANTIZABLE]
    out = [o.name for o in fp32.graph.output][:1]
    ref = layer_outputs(fp32, out, data)[out[0]]
    result = []
    for name in names:
        got = layer_outputs(quantize(fp32, only=[name]), out, data)[out[0]]
        err = channel_nmse(ref, got)
        result.append(LayerError(name, nodes[name].op_type, layer_name(fp32, nodes[name]), err, err))
    return sorted(result, key=lambda e: (-e.error, e.node))


def format_errors(errors: list[LayerError], limit: int | None = None) -> str:
    """A plain-text table, worst layers first."""
    rows = errors[:limit] if limit else errors
    width = max([len(e.layer) for e in rows] + [5])
    lines = [f"{'layer':<{width}}  {'op':<12} {'error':>10} {'added':>10}"]
    lines += [f"{e.layer:<{width}}  {e.op_type:<12} {e.error:>10.3g} {e.added:>10.3g}" for e in rows]
    return "\n".join(lines)


DAMAGE_FLOOR = 1e-3  # below this much error reaching a layer, what it adds counts absolutely; above, relatively


def damage(error: float, before: float) -> float:
    """How much a layer harms the signal: the error it adds beyond what reaches it, relative to that (floored).
    Relative, because once a crushed tensor is upstream every later layer's error explodes in absolute terms."""
    return (error - before) / (before + DAMAGE_FLOOR)


def fallback_units(fp32: Any, int8: Any, data: Dataset) -> list[list[str]]:
    """Nodes to keep in float, one group per damaged tensor, the worst damage() first, from one fp32 and one
    int8 run (activation_errors), not one quantization per layer. A tensor is quantized for its producer and for
    each consumer, so a group is the tensor's producer and its consumers, of the QUANTIZABLE op types."""
    by_name = {n.name: n for n in fp32.graph.node}
    consumers: dict[str, list[Any]] = {}
    for n in fp32.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    units: list[list[str]] = []
    seen: set[str] = set()
    ranked = sorted(activation_errors(fp32, int8, data), key=lambda e: (-damage(e.error, e.error - e.added), e.node))
    for e in ranked:
        node = by_name.get(e.node)
        if e.added <= 0 or node is None:
            continue
        group = [node] + [c for t in node.output for c in consumers.get(t, [])]
        names = list(dict.fromkeys(n.name for n in group if n.op_type in QUANTIZABLE and n.name not in seen))
        if names:
            seen.update(names)
            units.append(names)
    return units
