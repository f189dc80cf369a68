"""The two extension points: a Pass transforms a ModelState; a Target turns one into artifacts."""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel

from deployc.core import memory
from deployc.core.state import ModelState, PassRecord, Table, TensorSpec
from deployc.errors import PipelineError, failure_text

if TYPE_CHECKING:
    from deployc.compiler.instruments import Instruments
    from deployc.compiler.pass_cache import PassCache
    from deployc.core.config import BuildConfig, QuantizeSpec
    from deployc.data.dataset import Dataset
    from deployc.data.reference import Reference


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
    remedy: Remedy | None = None  # the accuracy remedy being tried when a target re-emits an artifact
    config_sha256: str | None = None  # config.config_digest() of the build's own config (a remedy's spec differs)

    def for_remedy(self, remedy: Remedy, work_dir: Path) -> Context:
        """This context with the remedy's quantize spec as the build's (what emit() reads), writing to work_dir."""
        config = self.config.model_copy(update={"quantize": remedy.spec})
        return dataclasses.replace(self, config=config, work_dir=work_dir, remedy=remedy)

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
    cacheable: ClassVar[bool] = False  # True when the pass's whole output is state.onnx (see compiler/pass_cache.py)
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

    @property
    def kind(self) -> str:
        """The precision without a runtime row's suffix ('int8' for 'int8@openvino'): what the gates key on."""
        return precision_parts(self.precision)[0]

    @property
    def row(self) -> str:
        """The runtime row ('@openvino'), '' for the target's own runtime: a row compares with its own fp32."""
        runtime = precision_parts(self.precision)[1]
        return f"@{runtime}" if runtime else ""


def precision_parts(precision: str) -> tuple[str, str]:
    """('int8', 'openvino') for a runtime row's precision 'int8@openvino'; ('int8', '') for the target's own."""
    kind, _, runtime = precision.partition("@")
    return kind, runtime


@dataclass(frozen=True)
class Remedy:
    """One accuracy-remedy trial of an artifact: the quantize spec it is emitted with and what changed.

    `spec` becomes ctx.config.quantize while the target re-emits (Context.for_remedy); `options` holds knobs of
    one target that no spec field names (e.g. tflite's float-fallback tensor patterns), read from ctx.remedy.
    """

    stage: str  # "as configured" for the artifact first emitted, else one of config.REMEDY_STAGES
    change: str  # what differs from the trial it started from, e.g. "calibration percentile"
    spec: QuantizeSpec
    options: dict[str, Any] = field(default_factory=dict)
    fallback: tuple[str, ...] = ()  # layers this trial keeps out of int8, worst first (for the report)


# a target's re-emit of one precision with another context (Context.for_remedy): never raises, errors in the artifact
Reemit = Callable[["Context"], "Artifact"]
# what the driver does with each emitted artifact: validate it, and remedy it when it fails (validation/remedies.py)
Finish = Callable[["Artifact", "Reemit | None", Any], "Artifact"]


class Target(abc.ABC):
    """A deployment target: builds artifacts from a ModelState and runs them on its own runtime.

    Accuracy remedies (validation/remedies.py): when an artifact fails its gate and `remedy_stages(artifact)` names
    stages, the driver asks `remedies(stage, ...)` for candidates, one stage at a time in config.REMEDY_STAGES'
    order, and re-emits the artifact with each (emit() with ctx = ctx.for_remedy(remedy, work_dir)) on the same
    lowered result, until one passes.
    """

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    requires_any: ClassVar[tuple[frozenset[str], ...]] = (frozenset({"torch"}), frozenset({"onnx"}))
    # QuantizeSpec fields beyond the basics this target realises (e.g. "smoothing"): a stage that needs one is
    # offered only by targets that list it
    quantize_fields: ClassVar[frozenset[str]] = frozenset()

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

    def remedy_stages(self, artifact: Artifact, lowered: Any) -> tuple[str, ...]:
        """The remedy stages this target can try on `artifact`, made from `lowered` (e.g. int8 only); () when none."""
        return ()

    def remedies(self, stage: str, base: Remedy, artifact: Artifact, lowered: Any, ctx: Context) -> list[Remedy]:
        """Candidates of one stage, in the order to try them, each a change of `base` (the best trial so far, which
        made `artifact`); deterministic for the same inputs."""
        return []

    def build(self, state: ModelState, ctx: Context, finish: Finish | None = None) -> list[Artifact]:
        """One Artifact per precision. A precision the target cannot make (its converter or quantizer refuses the
        model) becomes an artifact with `error` set, so the other precisions and targets still ship.

        finish(artifact, reemit, lowered) is called on each artifact as it is made (the driver validates and
        remedies it there); reemit emits the same precision again from the same lowered result."""
        done = finish or (lambda art, reemit, lowered: art)
        try:
            lowered = self.lower(state, ctx)
        except PipelineError:
            raise  # the config asks for something this target cannot do: exit 2, nothing built
        except Exception as exc:
            return [done(self.failed(p, exc), None, None) for p in self.precisions()]
        artifacts: list[Artifact] = []
        for precision in self.precisions():
            reemit = self._reemit(state, lowered, precision)
            t0, cpu0 = time.perf_counter(), time.process_time()
            art = reemit(ctx)
            # what remedy trial 1 cost to make (its validation is finish's): the loop reports the whole sequence
            art.perf.update(made_seconds=time.perf_counter() - t0, made_cpu_seconds=time.process_time() - cpu0)
            if all(a.precision != art.precision for a in artifacts):  # e.g. fp32 and int8 after qat: one QDQ graph
                artifacts.append(done(art, reemit, lowered))
        return artifacts

    def _reemit(self, state: ModelState, lowered: Any, precision: str) -> Reemit:
        def emit(ctx: Context) -> Artifact:
            try:
                return self.emit(state, lowered, ctx, precision)
            except PipelineError:
                raise
            except Exception as exc:
                return self.failed(precision, exc)

        return emit

    def failed(self, precision: str, exc: BaseException) -> Artifact:
        return Artifact(self.name, precision, None, self.name, "", error=failure_text(exc))

    def activations(self, artifact: Artifact, feed: dict[str, np.ndarray]) -> memory.Activations | None:
        """What one batch `feed` makes infer() hold, for sizing batches to the memory budget: an ONNX artifact's
        from its shapes; None when the target cannot tell (its batches are then measured, core/memory.py)."""
        return None if artifact.path is None else memory.file_activations(artifact.path, feed)

    @abc.abstractmethod
    def infer(self, artifact: Artifact, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the artifact on its runtime; float inputs in, float outputs out."""

    def scored_only(self, artifact: Artifact) -> None:  # noqa: B027 (optional hook: most targets have one config)
        """The coming infer() runs of `artifact` are scored, not timed (a remedy trial): a target may open its
        runtime in a configuration that costs less CPU and gives the same outputs; close() ends it."""

    def close(self, artifact: Artifact) -> None:  # noqa: B027 (optional hook: most targets keep nothing open)
        """Release whatever infer() keeps open for this artifact (sessions, interpreters)."""


def tensor_specs_json(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    return [dict(s.to_json(), quantization=None) for s in specs]
