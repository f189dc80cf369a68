"""What every artifact says about itself, with the same keys on every target: ONNX `metadata_props` (onnxruntime:
`session.get_modelmeta().custom_metadata_map`) and TFLite `metadata` entries (targets/tflite_flatbuffer.py). Values
are strings; the structured ones are JSON.

deployc.model_name, deployc.model_version   name (config `name`) and `model.version` (when given)
deployc.inputs    [{name, shape, dtype, layout, normalize, quantization}]  layout: nhwc | nchw | null (not 4-D);
                  normalize: {mean, std} the app applies first; quantization: {scale, zero_point, dtype} of an int8
                  input (x_int8 = round(x / scale) + zero_point), null when the artifact takes float
deployc.outputs   [{name, shape, dtype, layout, quantization}]  (x = (y_int8 - zero_point) * scale)
deployc.labels    the class labels (model.labels), when given
deployc.version   deployc's version
deployc.config_sha256   sha256 of the build's resolved config as manifest.json records it (its `config_sha256`).
                  Not the manifest's digest: the manifest hashes the artifacts, so its digest cannot be inside them.
deployc.target, deployc.precision
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from deployc.compiler.contracts import Context
from deployc.core.config import config_digest, read_labels
from deployc.errors import UsageError
from deployc.targets.tflite_export import is_image

PREFIX = "deployc."


def output_names(ctx: Context, count: int) -> list[str]:
    """The names every target gives the model's outputs: the reference's (model.outputs, an ONNX model's own
    names, else output_0, output_1, ...)."""
    if ctx.reference is not None and len(ctx.reference.names) == count:
        return list(ctx.reference.names)
    if ctx.config.model.outputs and len(ctx.config.model.outputs) == count:
        return list(ctx.config.model.outputs)
    return [f"output_{i}" for i in range(count)]


def with_layout(entries: list[dict[str, Any]], layout: str = "nchw") -> list[dict[str, Any]]:
    """I/O entries with `layout` set: `layout` for a 4-D float tensor without one, None for the others."""
    return [dict(e, layout=e.get("layout") or (layout if is_image(e["shape"], e["dtype"]) else None)) for e in entries]


def artifact_metadata(
    ctx: Context, target: str, precision: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]
) -> dict[str, str]:
    """The metadata entries of one artifact from its manifest I/O entries (with layout) and the build config."""
    config = ctx.config
    normalize = {i.name: i.normalize.model_dump() for i in config.model.inputs if i.normalize is not None}
    labels = read_labels(config)

    def spec(entry: dict[str, Any], with_normalize: bool) -> dict[str, Any]:
        out = {k: entry.get(k) for k in ("name", "shape", "dtype", "layout", "quantization")}
        if with_normalize:
            out["normalize"] = normalize.get(entry["name"])
        return out

    entries = {
        "model_name": config.name,
        "inputs": json.dumps([spec(e, True) for e in inputs], sort_keys=True),
        "outputs": json.dumps([spec(e, False) for e in outputs], sort_keys=True),
        "version": importlib.metadata.version("deployc"),
        "config_sha256": ctx.config_sha256 or config_digest(config),
        "target": target,
        "precision": precision,
    }
    if config.model.version is not None:  # no empty entries: Vela warns of a zero-length buffer
        entries["model_version"] = config.model.version
    if labels is not None:
        entries["labels"] = json.dumps(labels, ensure_ascii=False)
    return {PREFIX + k: v for k, v in entries.items()}


def save_onnx(proto: Any, path: Path, entries: dict[str, str]) -> None:
    """onnx.save of `proto` with `entries` in its metadata_props (same keys replaced); `proto` is left as it was
    (it may be a cached graph another artifact shares)."""
    import onnx

    before = [(p.key, p.value) for p in proto.metadata_props]
    del proto.metadata_props[:]
    for key, value in before:
        if key not in entries:
            proto.metadata_props.add(key=key, value=value)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    try:
        onnx.save(proto, str(path))
    finally:
        del proto.metadata_props[:]
        for key, value in before:
            proto.metadata_props.add(key=key, value=value)


def name_outputs(proto: Any, names: list[str]) -> Any:
    """The ONNX graph with its outputs named `names` (a new ModelProto; `proto` itself when they already are). An
    output that is also a graph input, an initializer or another output gets an Identity of its own, so nothing
    else is renamed with it."""
    import onnx_ir as ir

    if [o.name for o in proto.graph.output] == names:
        return proto
    if len(proto.graph.output) != len(names):
        raise UsageError(f"model.outputs: {len(names)} names for a graph with {len(proto.graph.output)} outputs")
    model = ir.serde.deserialize_model(proto)
    graph = model.graph
    taken = {v.name for v in graph.inputs} | set(graph.initializers) | {o.name for n in graph for o in n.outputs}
    for i, new in enumerate(names):
        value = graph.outputs[i]
        if value.name == new:
            continue
        if new in taken:
            raise UsageError(f"model.outputs: '{new}' already names another value of the ONNX graph")
        if value.is_graph_input() or value.is_initializer() or list(graph.outputs).count(value) > 1:
            node = ir.node("Identity", [value])
            graph.append(node)
            node.outputs[0].shape, node.outputs[0].type = value.shape, value.type
            graph.outputs[i] = value = node.outputs[0]
        value.name = new
        taken.add(new)
    return ir.serde.serialize_model(model)
