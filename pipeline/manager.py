"""The PassManager: checks a whole pipeline before anything runs, then runs it with instruments."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.config import BuildConfig, format_validation_error
from pipeline.contracts import Context, Pass, Target
from pipeline.errors import DeploycError, PipelineError, UsageError
from pipeline.pipeline_string import format_pipeline
from pipeline.registry import get_pass, get_target
from pipeline.state import ModelState, PassRecord

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


def _validate_options(model: type[BaseModel], options: dict[str, Any] | None, where: str, pass_name: str,
                      ran_before: tuple[str, ...]) -> BaseModel:
    try:
        return model.model_validate(options or {})
    except ValidationError as exc:
        raise PipelineError(format_validation_error(exc, model, where).replace(f"{where}: ", f"{where}.", 1),
                            pass_name=pass_name, ran_before=ran_before) from None


class PassManager:
    """Resolves and checks every pass and target of a config, then runs the passes in order."""

    def __init__(self, passes: list[PlannedPass], targets: dict[str, PlannedTarget], initial: frozenset[str]):
        self.passes = passes
        self.targets = targets
        self.initial = initial

    @classmethod
    def from_config(cls, config: BuildConfig, initial: frozenset[str], only: list[str] | None = None) -> "PassManager":
        """Resolve names and options and check requirements; raises PipelineError before any work."""
        planned: list[PlannedPass] = []
        facts = set(initial)
        for i, entry in enumerate(config.passes):
            (name, options), = entry.items()
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

    def run(self, state: ModelState, ctx: Context) -> ModelState:
        for planned in self.passes:
            state = run_pass(planned.cls(planned.config), state, ctx)
        return state


def run_pass(p: Pass, state: ModelState, ctx: Context) -> ModelState:
    """Run one pass with instruments around it; errors name the pass and the passes before it."""
    before = tuple(r.name for r in state.history)
    missing = p.requires - state.facts
    if missing:
        raise PipelineError(f"needs {', '.join(sorted(missing))}", pass_name=p.name, ran_before=before)
    ctx.instruments.before_pass(p.name)
    t0 = time.perf_counter()
    config = p.config.model_dump(mode="json")
    key = None
    if p.cacheable and ctx.cache is not None and ctx.cache.enabled:
        from pipeline.cache import dataset_digest

        data = [dataset_digest(ctx.dataset_for(f)) for f in sorted(p.requires) if f.startswith("data.")]
        key = ctx.cache.key(state, p.name, config, data)
        hit = ctx.cache.load(key)
        if hit is not None:
            record = PassRecord(p.name, config, True, hit.metrics, time.perf_counter() - t0, cached=True)
            facts = (state.facts - p.invalidates) | p.produces | set(hit.facts_added)
            new_state = state.replace(onnx=hit.proto, facts=frozenset(facts)).with_record(record)
            ctx.instruments.after_pass(p.name, new_state, record)
            return new_state
    try:
        new_state, modified, metrics = p.run(state, ctx)
    except PipelineError:
        raise
    except DeploycError as exc:
        raise type(exc)(f"pass '{p.name}' (after: {' | '.join(before) or 'nothing'}): {exc}") from exc
    seconds = time.perf_counter() - t0
    facts = (state.facts - p.invalidates) | p.produces | (new_state.facts - state.facts)
    if key is not None:
        ctx.cache.store(key, new_state.onnx, metrics, sorted(new_state.facts - state.facts))
    record = PassRecord(p.name, config, modified, metrics, seconds)
    new_state = new_state.replace(facts=frozenset(facts)).with_record(record)
    ctx.instruments.after_pass(p.name, new_state, record)
    return new_state
