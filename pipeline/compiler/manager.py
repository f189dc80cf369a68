"""The PassManager: checks a whole pipeline before anything runs, then runs it with instruments."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, ValidationError

from deployc.compiler.contracts import Context, Pass, PassResult, Target
from deployc.compiler.pass_cache import dataset_digest, module_digest
from deployc.compiler.pipeline_string import format_pipeline
from deployc.compiler.registry import get_pass, get_target
from deployc.compiler.stage_check import RECORD_KEY, stage_drift, warning_text
from deployc.core.config import BuildConfig, format_validation_error
from deployc.core.state import ModelState, PassRecord
from deployc.errors import DeploycError, InvalidGraphError, PassError, PipelineError, UsageError

# What each fact means, for errors that say how to satisfy a requirement.
FACT_HINTS = {
    "torch": "a torch model (model.factory or model.exported); an ONNX-only model (model.onnx) cannot run torch-level passes",
    "onnx": "an ONNX graph: put 'export.onnx' before it",
    "data.validation": "validation data: set data.validation",
    "data.train": "training data: set data.train (labelled samples; digits builds default to digits:train)",
    "data.calibration": "calibration data: set data.calibration (or use digits / an npz with calib_* arrays)",
}


@dataclass(frozen=True)
class PlannedPass:
    cls: type[Pass]
    config: BaseModel

    @property
    def options(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json", exclude_defaults=True)


@dataclass(frozen=True)
class PlannedTarget:
    cls: type[Target]
    options: BaseModel

    @property
    def option_dict(self) -> dict[str, Any]:
        return self.options.model_dump(mode="json", exclude_defaults=True)


def _validate_options(
    model: type[BaseModel], options: dict[str, Any] | None, where: str, pass_name: str, ran_before: tuple[str, ...]
) -> BaseModel:
    try:
        return model.model_validate(options or {})
    except ValidationError as exc:
        raise PipelineError(
            format_validation_error(exc, model, where).replace(f"{where}: ", f"{where}.", 1),
            pass_name=pass_name,
            ran_before=ran_before,
        ) from None


class PassManager:
    """Resolves and checks every pass and target of a config, then runs the passes in order."""

    def __init__(self, passes: list[PlannedPass], targets: dict[str, PlannedTarget], initial: frozenset[str]):
        self.passes = passes
        self.targets = targets
        self.initial = initial

    @classmethod
    def from_config(cls, config: BuildConfig, initial: frozenset[str], only: list[str] | None = None) -> PassManager:
        """Resolve names and options and check requirements; raises PipelineError before any work."""
        planned: list[PlannedPass] = []
        facts = set(initial)
        for i, entry in enumerate(config.passes):
            ((name, options),) = entry.items()
            before = tuple(p.cls.name for p in planned)
            try:
                pass_cls = get_pass(name)
            except KeyError as exc:
                raise PipelineError(f"passes[{i}]: {exc.args[0]}", pass_name=name, ran_before=before) from None
            cfg = _validate_options(pass_cls.Config, options, f"passes[{i}].{name}", name, before)
            missing = sorted(pass_cls.requires - facts)
            if missing:
                needs = "; ".join(FACT_HINTS.get(f, f"'{f}'") for f in missing)
                raise PipelineError(f"passes[{i}] needs {needs}", pass_name=name, ran_before=before)
            facts = (facts - pass_cls.invalidates) | pass_cls.produces
            planned.append(PlannedPass(pass_cls, cfg))
        targets: dict[str, PlannedTarget] = {}
        names = list(config.targets)
        for wanted in only or []:
            if wanted not in config.targets:
                raise UsageError(f"--target {wanted}: not in this config's targets ({', '.join(names) or 'none'})")
        before = tuple(p.cls.name for p in planned)
        for name in only or names:
            try:
                target_cls = get_target(name)
            except KeyError as exc:
                raise PipelineError(f"targets: {exc.args[0]}", pass_name=name, ran_before=before) from None
            options = _validate_options(target_cls.Options, config.targets[name], f"targets.{name}", name, before)
            if not any(req <= facts for req in target_cls.requires_any):
                needs = " or ".join("+".join(sorted(r)) for r in target_cls.requires_any)
                hints = "; ".join(FACT_HINTS.get(f, f) for r in target_cls.requires_any for f in r - facts)
                raise PipelineError(f"target needs {needs}: {hints}", pass_name=name, ran_before=before)
            missing = sorted(target_cls.requires_for(options) - facts)
            if missing:
                needs = "; ".join(FACT_HINTS.get(f, f"'{f}'") for f in missing)
                raise PipelineError(f"targets.{name} needs {needs}", pass_name=name, ran_before=before)
            targets[name] = PlannedTarget(target_cls, options)
        return cls(planned, targets, frozenset(initial))

    def pipeline_string(self) -> str:
        steps = [(p.cls.name, p.options) for p in self.passes]
        steps += [(name, t.option_dict) for name, t in self.targets.items()]
        return format_pipeline(steps)

    def run(self, state: ModelState, ctx: Context, first: int = 0, stop: int | None = None) -> ModelState:
        """Run passes[first:stop]; `first` > 0 when `state` already went through the earlier ones (a shared prefix)."""
        for planned in self.passes[first:stop]:
            state = run_pass(planned.cls(planned.config), state, ctx)
        return state


def run_pass(p: Pass, state: ModelState, ctx: Context) -> ModelState:
    """Run one pass with instruments around it and its contract checked after it.

    Any exception is re-raised naming the pass and the passes before it: the user's to fix (a
    DeploycError keeps its exit code) or an internal error (PassError, exit 1).
    """
    before = tuple(r.name for r in state.history)
    missing = p.requires - state.facts
    if missing:
        raise PipelineError(f"needs {', '.join(sorted(missing))}", pass_name=p.name, ran_before=before)
    ctx.instruments.before_pass(p.name)
    t0 = time.perf_counter()
    config = p.config.model_dump(mode="json")
    key = None
    if p.cacheable and ctx.cache is not None:  # memo within the build always; disk unless --no-cache
        data = [dataset_digest(ctx.dataset_for(f)) for f in sorted(p.requires | p.reads) if f.startswith("data.")]
        key = ctx.cache.key(state, p, config, data)
        hit = ctx.cache.load(key)
        if hit is not None:
            result = PassResult(
                state.replace(onnx=hit.proto, facts=state.facts | set(hit.facts_added)),
                hit.modified,
                hit.metrics,
                hit.tables,
            )
            return _record(p, state, result, config, time.perf_counter() - t0, ctx, cached=True)
    fingerprint = input_fingerprint(state)
    try:
        result = p.run(state, ctx)
    except PipelineError:
        raise
    except DeploycError as exc:
        raise type(exc)(f"pass '{p.name}' (after: {' | '.join(before) or 'nothing'}): {exc}") from exc
    except Exception as exc:
        raise PassError(f"{type(exc).__name__}: {exc}", pass_name=p.name, ran_before=before) from exc
    _check_contract(p, state, result, fingerprint, before)
    if result.state.module is not None and result.state.module is not state.module:
        result = _with_stage_check(p, result, ctx, before)
    if key is not None:
        ctx.cache.store(
            key,
            result.state.onnx,
            result.modified,
            result.metrics,
            result.tables,
            sorted(result.state.facts - state.facts),
        )
    return _record(p, state, result, config, time.perf_counter() - t0, ctx)


def _with_stage_check(p: Pass, result: PassResult, ctx: Context, before: tuple[str, ...]) -> PassResult:
    """The pass's new module scored on validation samples (stage_check.py), in its record; a loud line when the
    pass itself loses the accuracy."""
    try:
        check = stage_drift(result.state, ctx)
    except Exception as exc:
        raise PassError(
            f"the module it returned fails on validation samples: {type(exc).__name__}: {exc}",
            pass_name=p.name,
            ran_before=before,
        ) from exc
    if check is None:
        return result
    if check["over_budget"]:
        ctx.instruments.log(warning_text(p.name, check))
    return replace(result, metrics={**result.metrics, RECORD_KEY: check})


def _record(
    p: Pass,
    state: ModelState,
    result: PassResult,
    config: dict[str, Any],
    seconds: float,
    ctx: Context,
    cached: bool = False,
) -> ModelState:
    facts = (state.facts - p.invalidates) | p.produces | (result.state.facts - state.facts)
    record = PassRecord(
        p.name,
        config,
        result.modified,
        dict(result.metrics),
        tuple(result.tables),
        dict(result.timings),
        seconds,
        cached,
    )
    out = result.state
    history = out.history if out.history[: len(state.history)] == state.history else state.history
    new_state = out.replace(facts=frozenset(facts), history=history).with_record(record)
    ctx.instruments.after_pass(p.name, new_state, record)
    return new_state


def input_fingerprint(state: ModelState) -> tuple[str, str]:
    """Digests of the graph and the module weights a pass receives, to prove afterwards it did not mutate them."""
    graph = "" if state.onnx is None else hashlib.sha256(state.onnx.SerializeToString(deterministic=True)).hexdigest()
    return graph, "" if state.module is None else module_digest(state.module)


def _check_contract(
    p: Pass, state: ModelState, result: Any, fingerprint: tuple[str, str], before: tuple[str, ...]
) -> None:
    """onnx-ir style postconditions: a PassResult, declared facts that hold, an honest `modified`, no mutation, and
    a new ONNX graph that the checker and onnxruntime accept."""

    def broken(message: str) -> PassError:
        return PassError(f"broke the pass contract: {message}", pass_name=p.name, ran_before=before)

    if not isinstance(result, PassResult) or not isinstance(result.state, ModelState):
        raise broken(f"run() returned {type(result).__name__}, not PassResult(state, modified, metrics)")
    out = result.state
    holds = {"onnx": out.onnx is not None, "torch": out.module is not None}
    for fact in sorted(p.produces & holds.keys()):
        if not holds[fact]:
            raise broken(f"declares it produces '{fact}' but returned no {'graph' if fact == 'onnx' else 'module'}")
    for fact in sorted(p.invalidates & holds.keys()):
        if holds[fact]:
            raise broken(
                f"declares it invalidates '{fact}' but returned a stale {'graph' if fact == 'onnx' else 'module'}"
            )
    if not result.modified and (out.onnx is not state.onnx or out.module is not state.module):
        raise broken("returned modified=False with a different graph or module")
    if input_fingerprint(state) != fingerprint:
        raise broken("mutated the state it was given (copy the module or graph before changing it)")
    if out.onnx is not None and out.onnx is not state.onnx:
        problem = graph_problem(out.onnx)
        if problem:
            raise InvalidGraphError(f"emitted an invalid ONNX graph: {problem}", pass_name=p.name, ran_before=before)


def graph_problem(proto: Any) -> str | None:
    """Why the onnx checker or onnxruntime (the runtime ONNX graphs run on) rejects `proto`; None when both accept."""
    import onnx

    from deployc.core.ort import session

    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        return f"the onnx checker rejects it: {_first_line(exc)}"
    try:
        session(proto, threads=1, optimize=False)  # loading resolves every node's types and attributes
    except Exception as exc:
        return f"onnxruntime cannot load it: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
