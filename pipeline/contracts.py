"""The two extension points: a Pass transforms a ModelState; a Target turns one into artifacts."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel

from deployc.errors import PipelineError
from deployc.state import ModelState, PassRecord, Table, TensorSpec

if TYPE_CHECKING:
    from deployc.cache import PassCache
    from deployc.config import BuildConfig
    from deployc.data import Dataset
    from deployc.instruments import Instruments
    from deployc.validate import Reference


@dataclass
class Context:
    """What passes and targets may read besides the model: config, data, where to write, instruments."""

    config: BuildConfig
    train: Dataset | None
    calibration: Dataset | None
    validation: Dataset | None
    work_dir: Path  # staging folder; artifacts are written here and moved into the out dir at the end
    instruments: Instruments
    cache: PassCache | None = None
    reference: Reference | None = None  # outputs and metric of the model as loaded (tuning scores against it)
    loaded: ModelState | None = None  # the model as loaded, before any pass (recovery training distils from it)

    def dataset_for(self, fact: str) -> Dataset | None:
        """The dataset behind a data.* fact (what a pass that requires it reads)."""
        return {"data.train": self.train, "data.calibration": self.calibration, "data.validation": self.validation}.get(
            fact
        )


@dataclass(frozen=True)
class PassResult:
    """What a pass returns: the new state, whether it changed the model, and what it measured.

    `metrics` and `tables` must be deterministic (the same inputs give the same values: they go into
    manifest.json); wall-clock figures go to `timings` (or to a Table's `timed` columns).
    """

    state: ModelState
    modified: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    tables: tuple[Table, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)


class Pass(abc.ABC):
    """One transformation of the model. Subclasses set the ClassVars and implement run().

    A pass returns a new ModelState and never mutates the one it was given (torch passes copy the
    module before changing it); `modified` must be honest. The PassManager checks both after each run,
    and that the declared `produces` facts hold (an 'onnx' pass returns a graph, a 'torch' pass a module).
    """

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    requires: ClassVar[frozenset[str]] = frozenset()
    produces: ClassVar[frozenset[str]] = frozenset()
    invalidates: ClassVar[frozenset[str]] = frozenset()  # facts that stop holding after this pass
    reads: ClassVar[frozenset[str]] = frozenset()  # data.* facts it uses when present (part of its cache key)
    cacheable: ClassVar[bool] = False  # True when the pass's whole output is state.onnx (see deployc/cache.py)
    # config sections run() reads through ctx.config besides model, data and its own options (e.g. {'quantize'});
    # None: unknown, maybe any. A sweep shares a pass's result between variants only where these agree.
    reads_config: ClassVar[frozenset[str] | None] = None

    def __init__(self, config: BaseModel):
        self.config = config

    @abc.abstractmethod
    def run(self, state: ModelState, ctx: Context) -> PassResult:
        """Transform `state` (without mutating it) and say what changed."""


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
    error: str | None = None  # why the target could not make it (converter/quantizer refused); gate 'error'
    metrics: dict[str, Any] = field(default_factory=dict)
    perf: dict[str, Any] = field(default_factory=dict)  # wall-clock figures: timings.json, never manifest.json
    gate: dict[str, Any] = field(default_factory=dict)
    history: tuple[PassRecord, ...] = ()  # the target-level passes that made this artifact (after the pipeline's)

    @property
    def label(self) -> str:
        return f"{self.target}/{self.precision}"

    @staticmethod
    def failed_reason(exc: BaseException) -> str:
        """'TypeName: message' on one line (its lines joined by '; '), short enough for a table cell."""
        text = "; ".join(line.strip(" -") for line in str(exc).splitlines() if line.strip(" -"))
        return f"{type(exc).__name__}: {text}".rstrip(": ")[:600]


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
    def lower(self, state: ModelState, ctx: Context) -> Any:
        """The work every precision shares (export, simplify, conversion); its result goes to emit()."""

    @abc.abstractmethod
    def emit(self, state: ModelState, lowered: Any, ctx: Context, precision: str) -> Artifact:
        """Run the target's passes for one precision and write its file under ctx.work_dir."""

    def build(self, state: ModelState, ctx: Context) -> list[Artifact]:
        """One Artifact per precision. A precision the target cannot make (its converter or quantizer refuses the
        model) becomes an artifact with `error` set, so the other precisions and targets still ship."""
        try:
            lowered = self.lower(state, ctx)
        except PipelineError:
            raise  # the config asks for something this target cannot do: exit 2, nothing built
        except Exception as exc:
            return [self.failed(p, exc) for p in self.precisions()]
        artifacts: list[Artifact] = []
        for precision in self.precisions():
            try:
                art = self.emit(state, lowered, ctx, precision)
            except PipelineError:
                raise
            except Exception as exc:
                art = self.failed(precision, exc)
            if all(a.precision != art.precision for a in artifacts):  # e.g. fp32 and int8 after qat: one QDQ graph
                artifacts.append(art)
        return artifacts

    def failed(self, precision: str, exc: BaseException) -> Artifact:
        return Artifact(self.name, precision, None, self.name, "", error=Artifact.failed_reason(exc))

    @abc.abstractmethod
    def infer(self, artifact: Artifact, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the artifact on its runtime; float inputs in, float outputs out."""

    def close(self, artifact: Artifact) -> None:  # noqa: B027 (optional hook: most targets keep nothing open)
        """Release whatever infer() keeps open for this artifact (sessions, interpreters)."""


def tensor_specs_json(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [dict(s.to_json(), quantization=None) for s in specs]
