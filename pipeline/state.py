"""What flows between passes: an immutable ModelState, replaced by each pass, never mutated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, shape (str for a dynamic axis), numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with every dynamic axis set to `batch` (dynamic axes are batch-like here)."""
        return tuple(batch if isinstance(d, str) else d for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: its name, resolved config, whether it changed the model, its metrics."""

    name: str
    config: dict[str, Any]
    modified: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False  # restored from the pass cache instead of run


@dataclass(frozen=True)
class ModelState:
    """The model at one point of the pipeline, at the torch level, the ONNX level, or both.

    `onnx` is an `onnx.ModelProto`: every library the ONNX passes call (onnxsim, onnxscript,
    onnxruntime.quantization, onnxruntime sessions) takes one, so converting to onnx-ir and back
    between passes would only cost time.
    """

    module: Any = None  # torch.nn.Module; typed loosely so this module does not import torch
    onnx: Any = None  # onnx.ModelProto
    inputs: tuple[TensorSpec, ...] = ()
    facts: frozenset[str] = frozenset()
    history: tuple[PassRecord, ...] = ()

    def replace(self, **changes: Any) -> "ModelState":
        return dataclasses.replace(self, **changes)

    def with_record(self, record: PassRecord) -> "ModelState":
        return dataclasses.replace(self, history=self.history + (record,))

    def example_inputs(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Deterministic zero inputs of the declared shapes, for export tracing and smoke runs."""
        return {t.name: np.zeros(t.concrete_shape(batch), dtype=t.dtype) for t in self.inputs}
