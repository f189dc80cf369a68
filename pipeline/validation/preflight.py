"""What `deployc validate-config` checks beyond the schema and the pipeline: everything a build would meet before
its first pass, on a few samples, so a config that fails at build fails here in seconds."""

from __future__ import annotations

from pathlib import Path

from deployc.compiler.export_errors import user_location
from deployc.compiler.loader import load_model
from deployc.core.config import BuildConfig, DataSource, check_labels, load_config, read_labels
from deployc.core.state import ModelState, dynamic_shapes
from deployc.data.metrics import get_metric
from deployc.data.reference import class_ids, compute_reference
from deployc.data.sources import calibration_source, load_dataset, train_source
from deployc.errors import UsageError, first_line

PROBE_SAMPLES = 64  # samples a factory is read for and the reference forward runs on


def _probe(source: DataSource) -> DataSource:
    """A factory is read only up to PROBE_SAMPLES; files load whole (cheap, and every label gets checked)."""
    if source.kind != "factory":
        return source
    return source.model_copy(update={"limit": min(source.limit or PROBE_SAMPLES, PROBE_SAMPLES)})


def preflight(config_or_path: str | Path | dict | BuildConfig) -> None:
    """Model files exist and parse (safetensors header, ONNX checker and an onnxruntime load), the factory imports
    and returns a module whose weight names and shapes match, the input specs run, the data sources load and fit
    the inputs, the labels fit the metric, and a torch model traces with torch.export (where every target's
    ONNX export starts). Raises UsageError naming the key or file at fault."""
    config = load_config(config_or_path)
    state = load_model(config)
    metric = get_metric(config)
    validation = load_dataset(_probe(config.data.validation), config, state.inputs, "validation")
    for role, source in (("calibration", calibration_source(config)), ("train", train_source(config))):
        if source is not None:
            load_dataset(_probe(source), config, state.inputs, role)
    ref = compute_reference(
        state, validation.take(PROBE_SAMPLES), metric, config.data.batch_size, config.data.output, config.model.outputs
    )
    check_labels(read_labels(config), [o.shape for o in ref.outputs], ref.names)
    if metric.classes and validation.labels is not None:
        class_ids(validation.labels, ref.outputs[ref.covered[0]], metric, validation.source)
    if state.module is not None:
        _traces(state)


def _traces(state: ModelState) -> None:
    import torch

    try:
        torch.export.export(
            state.module, state.example_tensors(batch=2), dynamic_shapes=dynamic_shapes(state.inputs), strict=False
        )
    except Exception as exc:
        where = user_location(exc, state.module)
        raise UsageError(
            "model: torch.export cannot trace the model, so no target can export it"
            + (f" — at {where} —" if where else ":")
            + f" {first_line(exc)}"
        ) from None
