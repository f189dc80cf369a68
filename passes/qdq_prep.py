"""Graph fixes made before onnxruntime's static quantizer sees a graph."""

from __future__ import annotations

import collections
from typing import Any

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
    out = type(proto)()
    out.CopyFrom(proto)
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
