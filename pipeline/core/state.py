"""What flows between passes: an immutable ModelState, replaced by each pass, never mutated."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# ONNX TensorProto element type <-> numpy dtype name: the one table every module uses.
ONNX_DTYPES: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
}


def onnx_dtype_name(elem_type: int) -> str:
    """numpy dtype name of an ONNX element type ('other' for types numpy cannot hold)."""
    return ONNX_DTYPES.get(elem_type, "other")


def axis_symbol(name: str) -> str:
    """A dynamic axis name as a Python identifier (torch.export.Dim needs one): 'seq-len' -> 'seq_len'."""
    clean = re.sub(r"\W", "_", name)
    return clean if re.match(r"[A-Za-z_]", clean) else "d_" + clean


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


def example_inputs(specs: tuple[TensorSpec, ...], batch: int = 1) -> dict[str, np.ndarray]:
    """Deterministic zero inputs of the declared shapes, for export tracing and smoke runs."""
    return {t.name: np.zeros(t.concrete_shape(batch), dtype=t.dtype) for t in specs}


def example_tensors(specs: tuple[TensorSpec, ...], batch: int = 1) -> tuple[Any, ...]:
    """example_inputs() as torch tensors, in input order (what torch.export and tracing take)."""
    import torch

    return tuple(torch.from_numpy(a) for a in example_inputs(specs, batch).values())


def dynamic_shapes(specs: tuple[TensorSpec, ...]) -> tuple[dict[int, Any] | None, ...]:
    """torch.export dynamic_shapes for `specs`: one Dim per axis name, shared by every input that uses it."""
    import torch

    dims: dict[str, Any] = {}
    return tuple(
        {i: dims.setdefault(d, torch.export.Dim(axis_symbol(d))) for i, d in enumerate(s.shape) if isinstance(d, str)}
        or None
        for s in specs
    )


@dataclass(frozen=True)
class Table:
    """A table for the reports. Columns listed in `timed` hold wall-clock figures: they go to timings.json
    and the reports, never to manifest.json (which must be byte-identical for the same inputs)."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    timed: frozenset[int] = frozenset()

    def to_json(self, with_timed: bool = True) -> dict[str, Any]:
        keep = [i for i in range(len(self.header)) if with_timed or i not in self.timed]
        return {
            "title": self.title,
            "header": [self.header[i] for i in keep],
            "rows": [[r[i] for i in keep] for r in self.rows],
        }


@dataclass(frozen=True)
class PassRecord:
    """What one pass did. `metrics` and `tables` are deterministic (manifest.json); `timings`, `seconds` and
    `cached` are wall-clock facts of this run (timings.json)."""

    name: str
    config: dict[str, Any]
    modified: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    tables: tuple[Table, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    cached: bool = False  # restored (pass cache, or the same run earlier in this build) instead of run

    def stable_json(self) -> dict[str, Any]:
        """The deterministic part, for manifest.json."""
        out = {"name": self.name, "config": self.config, "modified": self.modified, "metrics": self.metrics}
        if self.tables:
            out["tables"] = [t.to_json(with_timed=False) for t in self.tables]
        return out

    def timing_json(self) -> dict[str, Any]:
        """The wall-clock part, for timings.json (tables in full, timed columns included)."""
        out: dict[str, Any] = {"name": self.name, "seconds": round(self.seconds, 4), "cached": self.cached}
        if self.timings:
            out["timings"] = self.timings
        if any(t.timed for t in self.tables):
            out["tables"] = [t.to_json() for t in self.tables]
        return out


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

    def replace(self, **changes: Any) -> ModelState:
        return dataclasses.replace(self, **changes)

    def with_record(self, record: PassRecord) -> ModelState:
        return dataclasses.replace(self, history=self.history + (record,))

    def example_inputs(self, batch: int = 1) -> dict[str, np.ndarray]:
        return example_inputs(self.inputs, batch)

    def example_tensors(self, batch: int = 1) -> tuple[Any, ...]:
        return example_tensors(self.inputs, batch)
