"""The one door to a build's model inputs and reference: build, `validate-config` and bench all read their data here,
so every data path meets the same input contract and the reference the same sanity checks. preflight() is what
`deployc validate-config` checks beyond the schema and the pipeline: everything a build would meet before its first
pass, on a few samples, so a config that fails at build fails here in seconds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployc.compiler.export_errors import user_location
from deployc.compiler.loader import load_model, smoke_run
from deployc.core.config import BuildConfig, DataSource, check_labels, load_config, read_labels
from deployc.core.state import ModelState, dynamic_shapes
from deployc.data.contract import check_roles_agree
from deployc.data.dataset import Dataset
from deployc.data.metrics import Metric, get_metric
from deployc.data.reference import Reference, class_ids, reference_for
from deployc.data.sources import calibration_source, load_dataset, train_source
from deployc.errors import UsageError, first_line

PROBE_SAMPLES = 64  # samples a factory is read for and the reference forward runs on


@dataclass
class Inputs:
    """The model as loaded, its data by role, and the reference on the validation set."""

    state: ModelState
    metric: Metric
    validation: Dataset
    calibration: Dataset | None
    train: Dataset | None
    reference: Reference


def _probe(source: DataSource) -> DataSource:
    """A factory is read only up to PROBE_SAMPLES; files load whole (cheap, and every label gets checked)."""
    if source.kind != "factory":
        return source
    return source.model_copy(update={"limit": min(source.limit or PROBE_SAMPLES, PROBE_SAMPLES)})


def load_checked(config: BuildConfig, log: Any = None, train: bool = True, probe: bool = False) -> Inputs:
    """Model, data and reference, each checked: the data against the declared inputs (data/contract.py), the roles
    against each other (one scaling), the model on the first real validation batch (the smoke run), the reference
    for sanity (data/sanity.py). train=False skips the training data; probe reads factories and runs the reference
    on PROBE_SAMPLES samples only."""
    state = load_model(config, log=log, smoke=False)
    metric = get_metric(config)

    def load(source: DataSource, role: str) -> Dataset:
        return load_dataset(_probe(source) if probe else source, config, state.inputs, role)

    validation = load(config.data.validation, "validation")
    smoke_run(state, validation, config.data.batch_size)
    calib_src, train_src = calibration_source(config), train_source(config)
    calibration = load(calib_src, "calibration") if calib_src else None
    training = load(train_src, "train") if train_src and train else None
    if "scale" not in config.data.skip_checks:
        check_roles_agree({"validation": validation, "calibration": calibration, "train": training}, state.inputs)
    reference = reference_for(config, state, validation.take(PROBE_SAMPLES) if probe else validation, metric)
    check_labels(read_labels(config), [o.shape for o in reference.outputs], reference.names)  # model.labels fit
    if probe and metric.classes and validation.labels is not None:
        class_ids(validation.labels, reference.outputs[reference.covered[0]], metric, validation.source)
    return Inputs(state, metric, validation, calibration, training, reference)


def preflight(config_or_path: str | Path | dict | BuildConfig) -> None:
    """Model files exist and parse (safetensors header, ONNX checker and an onnxruntime load), the factory imports
    and returns a module whose weight names and shapes match, the model runs on real samples, the data sources load
    and fit the inputs, the labels fit the metric, the reference is sane, and a torch model traces with
    torch.export (where every target's ONNX export starts). Raises UsageError naming the key or file at fault."""
    config = load_config(config_or_path)
    inputs = load_checked(config, probe=True)
    if inputs.state.module is not None:
        _traces(inputs.state)


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
