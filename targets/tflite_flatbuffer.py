"""Edits of a finished .tflite flatbuffer through ai-edge-litert's own flatbuffer reader and writer: graph input and
output tensors named like the signature, and deployc's metadata as entries of the model's `metadata` table (name ->
buffer of UTF-8 text; the same keys as the ONNX artifacts' metadata_props)."""

from __future__ import annotations

from typing import Any

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
