"""cpu.int8 — int8 for the onnx target tuned to the CPU it will run on (onnxruntime's CPU execution provider).

What the profile decides, and why (measured with onnxruntime 1.32 on an AMD EPYC with AVX-512 VNNI,
benchmarks/int8_profile.py; every row is per-op kernel time from onnxruntime's profiler):
- Format: QDQ everywhere. onnxruntime fuses DQ→op→Q into the same integer kernels a QOperator graph names
  (QLinearConv, QLinearAdd/Mul/Sigmoid/Concat, uint8 MaxPool/Resize): ResNet-18 and YOLOv8n ran within 2%
  of their QOperator twins, and a QDQ file stays readable by every other runtime and execution provider.
- Types: uint8 activations × int8 weights (u8s8), the kernels MLAS has for VNNI and AVX2. `reduce_range`
  (7-bit weights) only where there is no VNNI: AVX2's VPMADDUBSW adds pairs of u8×s8 products in 16 bits
  and can saturate; VNNI (VPDPBUSD) accumulates in 32 bits and cannot.
- Conv input channels padded to a multiple of 4 (x86): MLAS's direct int8 convolution (ConvSym) takes
  only convs whose input channel count is a multiple of 4, others go through im2col + GEMM. The 3-channel
  stem of an image model ran at 16-85 GMAC/s against ~200 for the rest; with one zero channel (zero
  weights, so the result is exact) it joins the fast kernel.
- Not written into the artifact: onnxruntime's extended and layout optimizations (com.microsoft fused ops,
  NCHWc/NHWC blocking by vector width) — they depend on the onnxruntime version and the CPU and are applied
  at session creation anyway; the portable basic level already ran before quantization (quant_pre_process).

- Any CPU: ReduceMean over all spatial axes (how torch exports a global mean) becomes GlobalAveragePool,
  which onnxruntime fuses with its Q/DQ; as ReduceMean it was the one float island of ResNet-style graphs.

The pass also loads the result the way onnxruntime will run it (extended optimizations, in memory) and
counts the float islands left: float ops that read a DequantizeLinear and feed a QuantizeLinear, i.e.
Q/DQ pairs that did not fuse into an integer kernel.
"""

from __future__ import annotations

import collections
import dataclasses
import platform
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployc.compiler.contracts import Context, Pass, PassResult
from deployc.core.state import ModelState, Table
from deployc.passes.onnx_util import producers
from deployc.passes.openvino_qdq import openvino_placement

CpuName = Literal["auto", "x86-vnni", "x86-avx2", "arm64", "portable"]
Placement = Literal["onnxruntime", "openvino"]  # whose int8 fusions the Q/DQ follow (passes/openvino_qdq.py)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
CONV_SYM_MIN_OUTPUT = 16  # MLAS ConvSym on x86: output channels ≥ 16 and a multiple of 8, inputs a multiple of 4


@dataclass(frozen=True)
class CpuProfile:
    """What one kind of CPU wants from an int8 ONNX graph."""

    name: str
    reduce_range: bool
    pad_conv_channels: bool
    features: tuple[str, ...] = ()  # the CPU flags that chose it (empty when named explicitly)

    def describe(self) -> str:
        found = f" ({', '.join(self.features)})" if self.features else ""
        return (
            f"{self.name}{found}: QDQ, uint8 activations × int8 weights, "
            f"reduce_range {'on' if self.reduce_range else 'off'}, "
            f"conv input channels padded to ×4 {'on' if self.pad_conv_channels else 'off'}"
        )


PROFILES = {
    "x86-vnni": CpuProfile("x86-vnni", reduce_range=False, pad_conv_channels=True),
    "x86-avx2": CpuProfile("x86-avx2", reduce_range=True, pad_conv_channels=True),
    "arm64": CpuProfile("arm64", reduce_range=False, pad_conv_channels=False),  # not measured: library defaults
    "portable": CpuProfile("portable", reduce_range=False, pad_conv_channels=False),
}


def cpu_flags() -> set[str]:
    """Feature flags of this CPU from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith(("flags", "Features"))), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def detect(flags: set[str] | None = None, machine: str | None = None) -> CpuProfile:
    """The profile of this CPU (or of the given flags and machine name)."""
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        vnni = tuple(sorted(f for f in VNNI_FLAGS if f in flags))
        if vnni:
            return CpuProfile("x86-vnni", False, True, vnni)
        if "avx2" in flags:
            return CpuProfile("x86-avx2", True, True, ("avx2",))
    if machine in ("aarch64", "arm64"):
        return CpuProfile("arm64", False, False, tuple(sorted({"asimddp", "i8mm"} & flags)))
    return CpuProfile("portable", False, False)


def profile(name: CpuName, placement: Placement = "onnxruntime") -> CpuProfile:
    """The CPU's profile; with OpenVINO's placement without the channel padding, which only MLAS wants (OpenVINO
    runs a 3-channel stem in int8 itself; the Pad would be one more layer)."""
    found = detect() if name == "auto" else PROFILES[name]
    return found if placement == "onnxruntime" else dataclasses.replace(found, pad_conv_channels=False)


def quantizer_settings(name: CpuName, placement: Placement = "onnxruntime") -> dict[str, Any]:
    """The quantize.int8 options this CPU and Q/DQ placement need (merged into the build's quantization spec)."""
    shared = {"shared_concat_ranges": True} if placement == "openvino" else {}
    return {"reduce_range": profile(name).reduce_range, **shared}


def pad_conv_input_channels(proto: Any) -> tuple[Any, list[str]]:
    """A copy of a QDQ graph where each Conv that MLAS's direct int8 kernel would refuse only because its input
    channels are not a multiple of 4 reads a zero-padded input (Pad on the quantized tensor, with its zero
    point) through zero-padded int8 weights; the conv's result is unchanged. Returns (graph, conv names)."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    producer = producers(graph.node)
    padded, added = [], []
    for conv in [n for n in graph.node if n.op_type == "Conv"]:
        dq_x, dq_w = producer.get(conv.input[0]), producer.get(conv.input[1])
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        if group != 1 or not dq_x or not dq_w or {dq_x.op_type, dq_w.op_type} != {"DequantizeLinear"}:
            continue
        weight = inits.get(dq_w.input[0])
        if weight is None or len(weight.dims) < 3 or len(dq_x.input) < 3 or dq_x.input[2] not in inits:
            continue
        w = numpy_helper.to_array(weight)
        out_ch, in_ch = w.shape[:2]
        if in_ch % 4 == 0 or out_ch < CONV_SYM_MIN_OUTPUT or out_ch % 8:
            continue
        extra = 4 - in_ch % 4
        base = conv.name or conv.output[0]
        w_pad = np.concatenate([w, np.zeros((out_ch, extra, *w.shape[2:]), w.dtype)], axis=1)
        pads = np.zeros(2 * w.ndim, np.int64)
        pads[w.ndim + 1] = extra  # end of the channel axis
        graph.initializer.extend(
            [numpy_helper.from_array(w_pad, f"{base}_w_c4"), numpy_helper.from_array(pads, f"{base}_pads_c4")]
        )
        q_in, x_pad, q_pad = dq_x.input[0], f"{base}_x_c4", f"{base}_q_c4"
        added.append(
            (
                conv,
                [
                    helper.make_node("Pad", [q_in, f"{base}_pads_c4", dq_x.input[2]], [q_pad], name=f"{base}_pad_c4"),
                    helper.make_node("DequantizeLinear", [q_pad, *dq_x.input[1:]], [x_pad], name=f"{base}_dq_x_c4"),
                    helper.make_node(
                        "DequantizeLinear",
                        [f"{base}_w_c4", *dq_w.input[1:]],
                        [f"{base}_w_c4_dq"],
                        name=f"{base}_dq_w_c4",
                        axis=next((a.i for a in dq_w.attribute if a.name == "axis"), 1),
                    ),
                ],
            )
        )
        conv.input[0], conv.input[1] = x_pad, f"{base}_w_c4_dq"
        padded.append(base)
    if not padded:
        return proto, []
    for conv, nodes in added:  # insert before each conv, keeping the node list topologically sorted
        at = list(graph.node).index(conv)
        for k, node in enumerate(nodes):
            graph.node.insert(at + k, node)
    _drop_unused(graph)
    onnx.checker.check_model(out)
    return out, padded


def spatial_means_to_global_pool(proto: Any) -> tuple[Any, list[str]]:
    """A copy where ReduceMean over every spatial axis with keepdims (torch's `x.mean((2, 3), keepdim=True)`)
    is GlobalAveragePool, the same mean that onnxruntime fuses with its Q/DQ into QLinearGlobalAveragePool;
    left as ReduceMean it runs in float between a DequantizeLinear and a QuantizeLinear."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(proto).graph  # the quantizer's tensors have no value_info
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.value_info, *inferred.input]}

    swap = []
    for i, n in enumerate(proto.graph.node):
        rank = ranks.get(n.input[0], 0) if n.op_type == "ReduceMean" else 0
        keep = next((a.i for a in n.attribute if a.name == "keepdims"), 1)
        axes_attr = next((list(a.ints) for a in n.attribute if a.name == "axes"), None)
        axes = axes_attr if axes_attr is not None else (inits.get(n.input[1]) if len(n.input) > 1 else None)
        if rank < 3 or not keep or axes is None or {int(a) % rank for a in axes} != set(range(2, rank)):
            continue
        swap.append((i, helper.make_node("GlobalAveragePool", [n.input[0]], list(n.output), name=n.name)))
    if not swap:
        return proto, []
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for i, node in swap:
        out.graph.node[i].CopyFrom(node)
    _drop_unused(out.graph)
    return out, [node.name for _, node in swap]


def _drop_unused(graph: Any) -> None:
    """Remove nodes and initializers nothing reads any more (the old weight DQ of a padded conv)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def runtime_float_islands(proto: Any) -> list[tuple[str, str]]:
    """(op type, name) of every float op onnxruntime still runs between a DequantizeLinear and a QuantizeLinear
    after its QDQ fusions (extended level, no layout changes): the Q/DQ pairs that did not fuse."""
    import onnx
    import onnxruntime as ort

    from deployc.passes.onnx_util import scratch_dir

    with scratch_dir() as work:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(work / "optimized.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(work / "optimized.onnx"))
    nodes = list(optimized.graph.node)
    producer = {o: n.op_type for n in nodes for o in n.output if o}
    readers: dict[str, list[str]] = collections.defaultdict(list)
    for n in nodes:
        for i in n.input:
            readers[i].append(n.op_type)
    return [
        (n.op_type, n.name)
        for n in nodes
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and any(producer.get(i) == "DequantizeLinear" for i in n.input)
        and any("QuantizeLinear" in readers[o] for o in n.output)
    ]


class CpuInt8Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cpu: CpuName = Field("auto", description="the CPU to tune for; auto: the build machine's")
    placement: Placement = Field(
        "onnxruntime", description="openvino: keep only the Q/DQ OpenVINO runs in int8 (passes/openvino_qdq.py)"
    )


class CpuInt8(Pass):
    """Tune an int8 QDQ graph for a CPU (see the module docstring). Not cacheable: with cpu 'auto' its
    result depends on the machine, which the pass cache key does not include."""

    name = "cpu.int8"
    Config = CpuInt8Config
    requires = frozenset({"onnx"})

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        chosen = profile(self.config.cpu, self.config.placement)
        proto, pools = spatial_means_to_global_pool(state.onnx)
        proto, padded = pad_conv_input_channels(proto) if chosen.pad_conv_channels else (proto, [])
        dropped = 0
        if self.config.placement == "openvino":
            proto, dropped = openvino_placement(proto)
        islands = runtime_float_islands(proto)
        metrics = {"means_to_global_pool": len(pools), "convs_padded": len(padded), "float_islands": len(islands)}
        if self.config.placement == "openvino":
            metrics["qdq_pairs_dropped_for_openvino"] = dropped
        tables = ()
        if islands:
            counts = collections.Counter(op for op, _ in islands)
            tables = (
                Table(
                    "cpu.int8: float ops onnxruntime runs between DequantizeLinear and QuantizeLinear",
                    ("op", "count", "first"),
                    tuple((op, c, next(n for o, n in islands if o == op)) for op, c in counts.most_common()),
                ),
            )
        changed = proto is not state.onnx
        return PassResult(state.replace(onnx=proto) if changed else state, changed, metrics, tables)
