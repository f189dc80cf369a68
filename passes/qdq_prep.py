"""Graph fixes made before onnxruntime's static quantizer sees a graph (after its own pre-processing, which fuses
MatMul + Add into Gemm and Conv + Add into biased Convs): two shapes of real graphs its bias quantization breaks on."""

from __future__ import annotations

import collections
from typing import Any

from deployc.passes.onnx_util import copied

BIASED = {"Conv", "ConvTranspose", "Gemm"}  # ops whose input 2 is a bias the quantizer turns into int32


def unshared_biases(proto: Any) -> Any:
    """A copy in which each weighted op reads its own bias initializer.

    A bias shared by several ops needs one int32 copy per op (its scale is input scale × weight scale), and
    onnxruntime names the copies `<bias><n>` checking only initializer names: with tf2onnx's names
    ('conv1d_25' beside a tensor 'conv1d_252', basic-pitch) the copy takes an activation's name and the
    quantized graph no longer loads. Copies made here get names no tensor has.
    """
    inits = {i.name: i for i in proto.graph.initializer}
    uses = collections.Counter(n.input[2] for n in proto.graph.node if n.op_type in BIASED and len(n.input) > 2)
    shared = {name for name, count in uses.items() if count > 1 and name in inits}
    if not shared:
        return proto
    out = copied(proto)
    taken = {t for n in out.graph.node for t in (*n.input, *n.output)} | set(inits)
    seen: set[str] = set()
    for n in out.graph.node:
        bias = n.input[2] if n.op_type in BIASED and len(n.input) > 2 else ""
        if bias not in shared:
            continue
        if bias not in seen:  # the first user keeps the original
            seen.add(bias)
            continue
        k = 1
        while f"{bias}.copy{k}" in taken:
            k += 1
        copy = out.graph.initializer.add()
        copy.CopyFrom(inits[bias])
        copy.name = n.input[2] = f"{bias}.copy{k}"
        taken.add(copy.name)
    return out


def flat_gemm_biases(proto: Any) -> Any:
    """A copy in which a Gemm's C of shape [1, N] is [N] (the same broadcast): onnxruntime quantizes C as a
    per-channel bias and compares its rows as scalars, failing with 'truth value of an array is ambiguous'
    (Magika's Dense layers, fused from tf2onnx's MatMul + Add by the quantizer's own pre-processing)."""
    inits = {i.name: i for i in proto.graph.initializer}
    flat = {
        n.input[2]
        for n in proto.graph.node
        if n.op_type == "Gemm"
        and len(n.input) > 2
        and n.input[2] in inits
        and list(inits[n.input[2]].dims)[:1] == [1]
        and len(inits[n.input[2]].dims) == 2
    }
    if not flat:
        return proto
    out = copied(proto)
    for init in out.graph.initializer:
        if init.name in flat:
            dims = list(init.dims)
            del init.dims[:]
            init.dims.extend(dims[1:])
    for infos in (out.graph.value_info, out.graph.input):  # recorded shapes of those tensors: drop the leading 1
        for v in infos:
            if v.name in flat and len(v.type.tensor_type.shape.dim) == 2:
                del v.type.tensor_type.shape.dim[0]
    return out


def quantizer_ready(proto: Any) -> Any:
    return flat_gemm_biases(unshared_biases(proto))
