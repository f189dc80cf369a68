"""Helpers the ONNX-level passes share: op counts and a temp-file round trip for path-only APIs."""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def op_counts(proto: Any) -> dict[str, int]:
    return dict(sorted(collections.Counter(n.op_type for n in proto.graph.node).items()))


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private temp folder for libraries that only read and write files (onnxruntime.quantization)."""
    with tempfile.TemporaryDirectory(prefix="deployc-") as d:
        yield Path(d)


_ELEM = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _quant_params(proto: Any, tensor: str, as_input: bool) -> dict[str, Any] | None:
    """Scale/zero-point of the QuantizeLinear reading a graph input (or DequantizeLinear feeding an output)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    consts = {n.output[0]: n for n in proto.graph.node if n.op_type == "Constant"}

    def value(name: str) -> Any:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    for node in proto.graph.node:
        hit = (
            (node.op_type == "QuantizeLinear" and node.input[0] == tensor)
            if as_input
            else (node.op_type == "DequantizeLinear" and node.output[0] == tensor)
        )
        if hit and len(node.input) >= 3:
            scale, zp = value(node.input[1]), value(node.input[2])
            if scale is not None and zp is not None:
                return {
                    "scale": np.asarray(scale).tolist(),
                    "zero_point": np.asarray(zp).tolist(),
                    "dtype": str(np.asarray(zp).dtype),
                }
    return None


def io_specs(proto: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Manifest entries for graph inputs/outputs; `quantization` is where the graph quantizes them."""
    init_names = {i.name for i in proto.graph.initializer}
    ins = [
        {
            "name": v.name,
            "shape": _dims(v),
            "dtype": _ELEM.get(v.type.tensor_type.elem_type, "other"),
            "quantization": _quant_params(proto, v.name, True),
        }
        for v in proto.graph.input
        if v.name not in init_names
    ]
    outs = [
        {
            "name": v.name,
            "shape": _dims(v),
            "dtype": _ELEM.get(v.type.tensor_type.elem_type, "other"),
            "quantization": _quant_params(proto, v.name, False),
        }
        for v in proto.graph.output
    ]
    return ins, outs
