"""Edits of a finished .tflite flatbuffer through ai-edge-litert's own flatbuffer reader and writer: graph input and
output tensors named like the signature, and deployc's metadata as entries of the model's `metadata` table (name ->
buffer of UTF-8 text; the same keys as the ONNX artifacts' metadata_props)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deployc.core import memory

MAX_METADATA_BYTES = 1 << 20  # one entry; labels of 100 000 classes fit


def _read(model: bytes) -> Any:
    from ai_edge_litert.tools import flatbuffer_utils as fb

    return fb.read_model_from_bytearray(bytearray(model))


def _write(graph: Any) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils as fb

    return bytes(fb.convert_object_to_bytearray(graph))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def name_io_tensors(model: bytes) -> bytes:
    """The graph's input and output tensors named as their signature entries ('image', not
    'serving_default_image:0'): what TFLite Micro and Netron users, who see no signature, read."""
    graph = _read(model)
    for signature in graph.signatureDefs or []:
        tensors = graph.subgraphs[signature.subgraphIndex].tensors
        for entry in list(signature.inputs or []) + list(signature.outputs or []):
            tensors[entry.tensorIndex].name = _text(entry.name).encode()
    return _write(graph)


def with_metadata(model: bytes, entries: dict[str, str]) -> bytes:
    """The flatbuffer with `entries` in its metadata table (entries of the same names replaced)."""
    from ai_edge_litert import schema_py_generated as schema

    graph = _read(model)
    kept = [m for m in graph.metadata or [] if _text(m.name) not in entries]
    graph.metadata = kept
    for name, text in entries.items():
        data = text.encode()
        if len(data) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata '{name}' is {len(data)} bytes; at most {MAX_METADATA_BYTES}")
        buffer = schema.BufferT()
        buffer.data = list(data)
        graph.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name.encode()
        entry.buffer = len(graph.buffers) - 1
        graph.metadata.append(entry)
    return _write(graph)


def read_metadata(model: bytes) -> dict[str, str]:
    """Every metadata entry of a flatbuffer whose buffer holds UTF-8 text (the converter's own binary entries,
    e.g. min_runtime_version, are included when they decode)."""
    graph = _read(model)
    out: dict[str, str] = {}
    for entry in graph.metadata or []:
        data = graph.buffers[entry.buffer].data
        try:
            out[_text(entry.name)] = bytes(data if data is not None else b"").decode()
        except UnicodeDecodeError:
            continue
    return out


# bytes a value of each schema TensorType (4-bit and 2-bit types packed at least a byte); others count as 4
_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4, 16: 2, 17: 1, 18: 2}
_TYPE_BYTES |= {19: 1, 20: 1, 21: 1, 22: 1}


def activations(path: str | Path) -> memory.Activations:
    """What one invocation of the flatbuffer's main subgraph holds: every tensor without constant data (its inputs
    and each op's outputs) at the file's own shapes, alive from the op that writes it to its last reader, as TFLite's
    arena planner allocates them. The file is mapped, not read: only the tables are touched, never the weights."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        tensors, dynamic, steps, inputs, outputs = _arena_tensors(buf)
    peak = memory.live_peak(inputs, steps, tensors, outputs)
    return memory.Activations({str(i): n for i, n in tensors.items()}, peak, unsized=len(dynamic))


def _ints(table: Any, field: str) -> list[int]:
    """A vector field element by element: a numpy view (…AsNumpy) would pin the file's mapping open."""
    return [int(getattr(table, field)(j)) for j in range(getattr(table, f"{field}Length")())]


def _arena_tensors(buf: Any) -> tuple[dict[int, int], set[int], list[tuple[list[int], list[int]]], list[int], set[int]]:
    """(bytes of each non-constant tensor, those of them with a dynamic axis (sized at 1 there), (reads, writes) of
    each op, inputs, outputs) of subgraph 0."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(buf, 0)
    graph = model.Subgraphs(0)
    constant = set()
    for b in range(model.BuffersLength()):
        data = model.Buffers(b)
        if data.DataLength() > 0 or data.Offset() > 1:  # weights inline, or past the flatbuffer (files over 2 GB)
            constant.add(b)
    tensors: dict[int, int] = {}
    dynamic: set[int] = set()
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        if t.Buffer() not in constant:
            values = int(np.prod([max(d, 1) for d in _ints(t, "Shape")], dtype=np.int64))
            tensors[i] = values * _TYPE_BYTES.get(t.Type(), 4)
            if any(d < 0 for d in _ints(t, "ShapeSignature")):
                dynamic.add(i)
    ops = [graph.Operators(j) for j in range(graph.OperatorsLength())]
    steps = [([i for i in _ints(op, "Inputs") if i >= 0], [i for i in _ints(op, "Outputs") if i >= 0]) for op in ops]
    return tensors, dynamic, steps, _ints(graph, "Inputs"), set(_ints(graph, "Outputs"))
