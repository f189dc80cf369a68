"""The two extension points: a Pass transforms a ModelState; a Target turns one into artifacts."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel

from pipeline.state import ModelState, TensorSpec

if TYPE_CHECKING:
    from passes.validate import Reference
    from pipeline.cache import PassCache
    from pipeline.config import BuildConfig
    from pipeline.data import Dataset
    from pipeline.instruments import Instruments


@dataclass
class Context:
    """What passes and targets may read besides the model: config, data, where to write, instruments."""

    config: "BuildConfig"
    train: "Dataset | None"
    calibration: "Dataset | None"
    validation: "Dataset | None"
    work_dir: Path  # staging folder; artifacts are written here and moved into the out dir at the end
    instruments: "Instruments"
    cache: "PassCache | None" = None
    reference: "Reference | None" = None  # outputs and metric of the model as loaded (tuning scores against it)

    def dataset_for(self, fact: str) -> "Dataset | None":
        """The dataset behind a data.* fact (what a pass that requires it reads)."""
        return {"data.train": self.train, "data.calibration": self.calibration,
                "data.validation": self.validation}.get(fact)


class Pass(abc.ABC):
    """One transformation of the model. Subclasses set the ClassVars and implement run().

    A pass returns a new ModelState (it never mutates the one it was given; torch passes copy the
    module before changing it) and says honestly whether it changed anything.
    """

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    requires: ClassVar[frozenset[str]] = frozenset()
    produces: ClassVar[frozenset[str]] = frozenset()
    invalidates: ClassVar[frozenset[str]] = frozenset()  # facts that stop holding after this pass
    cacheable: ClassVar[bool] = False  # True when the pass's whole output is state.onnx (see pipeline/cache.py)

    def __init__(self, config: BaseModel):
        self.config = config

    @abc.abstractmethod
    def run(self, state: ModelState, ctx: Context) -> tuple[ModelState, bool, dict[str, Any]]:
        """Return (new state, modified, metrics for the pass record).

        metrics are JSON-serialisable; the key "report_tables" may hold a list of
        {"title": str, "header": [str], "rows": [[...]]} that report.md renders as tables.
        """


@dataclass
class Artifact:
    """One file a target produced, plus everything the manifest says about it."""

    target: str
    precision: str
    path: Path | None  # absolute path while building; None when the artifact could not be built
    runtime: str
    runtime_version: str
    inputs: list[dict[str, Any]] = field(default_factory=list)  # TensorSpec.to_json() + "quantization"
    outputs: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # target-specific facts (op counts, engine status...)
    skipped: str | None = None  # reason this artifact cannot be run here; it is then never validated
    metrics: dict[str, Any] = field(default_factory=dict)
    perf: dict[str, Any] = field(default_factory=dict)  # timings: kept apart from deterministic fields
    gate: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.target}/{self.precision}"


class Target(abc.ABC):
    """A deployment target: builds artifacts from a ModelState and runs them on its own runtime."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    requires_any: ClassVar[tuple[frozenset[str], ...]] = (frozenset({"torch"}), frozenset({"onnx"}))

    def __init__(self, options: BaseModel):
        self.options = options

    @classmethod
    def available(cls) -> str | None:
        """None when this target can build and run here, else the reason it cannot."""
        return None

    @classmethod
    def requires_for(cls, options: BaseModel) -> frozenset[str]:
        """Facts these options need besides requires_any (e.g. calibration data for int8)."""
        return frozenset()

    def precisions(self) -> list[str]:
        return list(getattr(self.options, "precision", ["fp32"]))

    @abc.abstractmethod
    def build(self, state: ModelState, ctx: Context) -> list[Artifact]:
        """Lower, run target passes, emit files under ctx.work_dir; one Artifact per precision."""

    @abc.abstractmethod
    def infer(self, artifact: Artifact, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the artifact on its runtime; float inputs in, float outputs out."""

    def close(self, artifact: Artifact) -> None:
        """Release whatever infer() keeps open for this artifact (sessions, interpreters)."""


def tensor_specs_json(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [dict(s.to_json(), quantization=None) for s in specs]
