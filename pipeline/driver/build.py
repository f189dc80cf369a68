"""The compiler driver: config → check → load → reference → passes → targets → validate → outputs.

Everything that can be checked without work (config, pass names and requirements, targets) is
checked before the model loads; nothing is written to the out dir until the model and data load.
"""

from __future__ import annotations

import errno
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployc.compiler.contracts import Artifact, Context, Finish, Reemit, Target
from deployc.compiler.instruments import Instruments
from deployc.compiler.loader import initial_facts
from deployc.compiler.manager import PassManager
from deployc.compiler.pass_cache import PassCache
from deployc.compiler.prefix import PassPrefix, capture, resume
from deployc.compiler.registry import instruments as plugin_instruments
from deployc.compiler.stage_check import upstream_loss
from deployc.core import memory
from deployc.core.config import BuildConfig, config_digest, load_config
from deployc.core.state import ModelState
from deployc.core.timing import machine
from deployc.core.versions import library_versions
from deployc.data.metrics import get_metric
from deployc.data.reference import Reference
from deployc.driver.result import BuildResult
from deployc.driver.uptodate import CONFIG_NAME, build_key, default_out, saved_config, write_key
from deployc.errors import DeploycError, UsageError, failure_text
from deployc.outputs.junit import write_junit
from deployc.outputs.manifest import MANIFEST_VERSION, artifact_entry
from deployc.outputs.progress import progress_entry, write_progress
from deployc.outputs.report import gate_text, render_report, report_view
from deployc.outputs.report_html import write_html_report
from deployc.storage.files import write_json_atomic, write_text_atomic
from deployc.storage.outdir import OutDir, check_out_dir
from deployc.validation.diagnosis import diagnose
from deployc.validation.gate import coverage_warning, time_artifact, validate_artifact
from deployc.validation.gates import latency_gate
from deployc.validation.preflight import load_checked
from deployc.validation.remedies import loss_before_quantization, needs_remedy, remedy_artifact, unvalidated_reason


def check(
    config_or_path: str | Path | dict | BuildConfig, targets: list[str] | None = None
) -> tuple[BuildConfig, PassManager]:
    """Parse and check a config and its whole pipeline without loading anything heavy."""
    config = load_config(config_or_path)
    manager = PassManager.from_config(config, initial_facts(config), targets)
    if config.data.validation is None:
        raise UsageError(
            "data.validation: every build validates its artifacts; give a validation set "
            "(e.g. 'digits', 'data.npz' or 'file.py:callable')"
        )
    get_metric(config)
    return config, manager


@dataclass
class Loaded:
    """What a build reads before any pass runs: the model as loaded, its data, and the reference on it."""

    state: ModelState
    metric: Any
    validation: Any
    calibration: Any
    train: Any
    reference: Reference

    def context(self, config: BuildConfig, work_dir: Path, instruments: Instruments, cache: PassCache) -> Context:
        return Context(
            config,
            self.train,
            self.calibration,
            self.validation,
            work_dir,
            instruments,
            cache,
            reference=self.reference,
            loaded=self.state,  # recovery fine-tuning distils from the model as loaded, in a prefix run too
            config_sha256=config_digest(config),
        )


def load_inputs(config: BuildConfig, manager: PassManager, instruments: Instruments) -> Loaded:
    instruments.log("loading the model and data …")
    needs_train = any("data.train" in p.cls.requires for p in manager.passes)  # load training data only when used
    inputs = load_checked(config, log=instruments.log, train=needs_train)
    state = inputs.state.replace(facts=inputs.state.facts | initial_facts(config))
    reference, validation = inputs.reference, inputs.validation
    instruments.log(
        f"reference {inputs.metric.name} = {reference.value:.4f} on {len(validation)} samples ({validation.source})"
    )
    for part in reference.parts:
        instruments.log(f"  judged apart: {part.name} (scale {part.scale:.3g})")
    return Loaded(state, inputs.metric, validation, inputs.calibration, inputs.train, reference)


def run_prefix(
    config_or_path: str | Path | dict | BuildConfig, passes: int, start: PassPrefix | None = None, cache: bool = True
) -> PassPrefix:
    """Run only the first `passes` passes of a config's pipeline (continuing from `start` when given); writes
    nothing but temporary files. build(start=...) finishes it exactly as a whole build would."""
    config, manager = check(config_or_path)
    instruments = Instruments(quiet=True, extra=plugin_instruments())
    budget = memory.resolve(config.build.max_memory)
    with instruments.third_party_quiet(enabled=True), memory.applied(budget):
        loaded = load_inputs(config, manager, instruments)
        state = resume(start, manager.passes, loaded.state) if start is not None else loaded.state
        with tempfile.TemporaryDirectory(prefix="deployc-prefix-") as work:
            ctx = loaded.context(config, Path(work), instruments, PassCache.for_build(cache, instruments.log))
            state = manager.run(state, ctx, first=len(state.history), stop=passes)
    return capture(state)


def build(
    config_or_path: str | Path | dict | BuildConfig,
    out: str | Path | None = None,
    targets: list[str] | None = None,
    quiet: bool = False,
    instruments: Instruments | None = None,
    cache: bool = True,
    force: bool = False,
    debug: bool = False,
    start: PassPrefix | None = None,
    config_text: str | None = None,
) -> BuildResult:
    """Run one build; returns the result (exit_code 0 or 3) or raises a DeploycError (2 or 1).

    force: build into a folder that holds files deployc did not write (they are never replaced or removed).
    debug: let third-party libraries print to the terminal instead of capturing their output.
    start: the first passes' result, from run_prefix() on a config with the same model, data and first passes
    (a sweep shares one between variants); the manifest and artifacts are the same as without it.
    config_text: the config as YAML, saved as OUT/deployc.yaml with the build (the one-line start); a config read
    from OUT/deployc.yaml itself is saved again (default out: its folder).
    """
    t_start = time.perf_counter()
    config, manager = check(config_or_path, targets)
    key = build_key(config, targets)  # the inputs as they are now; stored with the outputs for no-op rebuilds
    instruments = instruments or Instruments(quiet=quiet)
    instruments.extra.extend(plugin_instruments())
    out_dir = Path(out) if out is not None else default_out(config_or_path, config.name)
    config_text = config_text if config_text is not None else saved_config(config_or_path, out_dir)
    check_out_dir(out_dir, force, tuple(manager.targets))
    instruments.log(f"pipeline: {manager.pipeline_string()}")
    budget = memory.resolve(config.build.max_memory)
    instruments.log(f"memory budget: {budget}")
    with instruments.third_party_quiet(enabled=not debug), memory.applied(budget):
        try:
            return _build(config, manager, out_dir, instruments, cache, t_start, key, start, config_text)
        except (OSError, DeploycError) as exc:
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            if isinstance(cause, OSError) and cause.errno in _ENVIRONMENT_ERRNOS:
                where = cause.filename or out_dir
                raise UsageError(
                    f"cannot write '{where}' ({cause.strerror}); the build did not finish: no new manifest.json in '{out_dir}'"
                ) from exc
            raise


# a full disk or a folder deployc may not write: the user's to fix (exit 2), not a bug in deployc
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def _build(
    config: BuildConfig,
    manager: PassManager,
    out_dir: Path,
    instruments: Instruments,
    cache: bool,
    t_start: float,
    key: str,
    start: PassPrefix | None,
    config_text: str | None = None,
) -> BuildResult:
    loaded = load_inputs(config, manager, instruments)
    state = resume(start, manager.passes, loaded.state) if start is not None else loaded.state
    metric, validation, reference = loaded.metric, loaded.validation, loaded.reference

    with OutDir(out_dir) as outdir:
        staging = outdir.staging
        ctx = loaded.context(config, staging, instruments, PassCache.for_build(cache, instruments.log))
        state = manager.run(state, ctx, first=len(state.history))
        upstream = upstream_loss(state.history)  # the torch-level passes already lost the accuracy: remedies can't help
        artifacts: list[Artifact] = []
        finished: list[dict[str, Any]] = []  # every target's artifacts as their gates become final (progress.py)
        for name, planned in manager.targets.items():
            target = planned.cls(planned.options)
            reason = planned.cls.available()
            finish = _finisher(target, ctx, validation, reference, config, upstream, finished)
            if reason:
                skipped = [Artifact(name, p, None, name, "unavailable", skipped=reason) for p in target.precisions()]
                artifacts.extend(finish(a, None, None) for a in skipped)
            else:
                artifacts.extend(target.build(state, ctx, finish))
        for warning in latency_gate(artifacts, config.validate_.latency_gate):
            instruments.log(f"warning: {warning}")
        diagnosis = diagnose(artifacts, upstream, config.validate_)
        manifest = _manifest(config, manager, metric, reference, validation, artifacts, state, staging, diagnosis)
        timings = {
            "passes": [r.timing_json() for r in state.history],
            "artifact_passes": {a.label: [r.timing_json() for r in a.history] for a in artifacts},
            "cache": {"hits": ctx.cache.hits, "misses": ctx.cache.misses, "memo_hits": ctx.cache.memo_hits},
            "total_seconds": round(time.perf_counter() - t_start, 3),
            "artifacts": {a.label: a.perf for a in artifacts},
            "machine": machine(),
            "memory": {"budget": memory.current().to_json(), "peak_rss_bytes": memory.peak_rss_bytes()},
        }
        # everything a person or CI reads is staged with the artifacts and published with them, manifest last
        write_text_atomic(staging / "report.md", render_report(report_view(manifest, timings)))
        write_html_report(manifest, staging, timings)
        write_junit(manifest, staging, timings)
        write_json_atomic(staging / "timings.json", timings)
        if config_text is not None:
            write_text_atomic(staging / CONFIG_NAME, config_text)
        write_json_atomic(staging / "manifest.json", manifest)
        write_key(staging, key)  # the no-op rebuild key, with the hashes of the staged reports it vouches for
        outdir.publish()
        ctx.cache.trim()  # the disk cache stays within its documented size (pass_cache.DEFAULT_MAX_BYTES)
        for art in artifacts:
            if art.path is not None:
                art.path = out_dir / art.path.relative_to(staging)
    return BuildResult(out_dir, manifest, artifacts, timings)


def _finisher(
    target: Target,
    ctx: Context,
    validation: Any,
    reference: Reference,
    config: BuildConfig,
    upstream: str | None,
    finished: list[dict[str, Any]],
) -> Finish:
    """What happens to each artifact a target makes: validated by its gate, remedied when it fails (remedies.py),
    unless the loss comes before quantization (`upstream`, or the target's fp32 artifact fails too)."""
    log = ctx.instruments.log
    made: list[Artifact] = []

    def run_on(art: Artifact, step: Callable[[], None]) -> None:  # a runtime that fails is the artifact's error
        try:
            step()
        except Exception as exc:
            art.error = failure_text(exc)
            art.gate = {"status": "error", "reason": unvalidated_reason(exc, art.error)}
        target.close(art)

    def validate(art: Artifact, latency: bool = True) -> None:
        rules, batch = config.validate_, config.data.batch_size
        t0, cpu0 = time.perf_counter(), time.process_time()
        run_on(art, lambda: validate_artifact(target, art, validation, reference, rules, batch, latency))
        art.perf.update(validated_seconds=time.perf_counter() - t0, validated_cpu_seconds=time.process_time() - cpu0)

    def timed(art: Artifact) -> None:  # the remedy trial that ships: its latency, as every artifact's
        run_on(art, lambda: time_artifact(target, art, validation, config.validate_))

    def finish(art: Artifact, reemit: Reemit | None, lowered: Any) -> Artifact:
        if art.error:
            log(f"{art.label}: not built: {art.error}")
        validate(art)
        remedies = config.quantize.remedies
        before = loss_before_quantization(art, made, upstream, config.validate_)
        if before:
            art.gate = {**art.gate, "reason": f"{art.gate['reason']}; {before}"}
        elif reemit is not None and remedies != "off" and needs_remedy(art, config.validate_):
            art = remedy_artifact(target, art, reemit, lowered, ctx, validate, remedies, log, timed)
        made.append(art)
        finished.append(progress_entry(art, ctx.work_dir))
        write_progress(ctx.work_dir, finished)  # a build killed from outside still leaves what passed, with hashes
        warning = coverage_warning(art)
        if warning:
            log(f"warning: {warning}")
        log(f"{art.label}: {gate_text(art.gate, art.runtime, art.details)} — {art.gate['reason']}")
        return art

    return finish


def _manifest(
    config: BuildConfig,
    manager: PassManager,
    metric: Any,
    reference: Any,
    validation: Any,
    artifacts: list[Artifact],
    state: Any,
    out_dir: Path,
    diagnosis: str | None = None,
) -> dict[str, Any]:
    """Everything deterministic about the build: same inputs give a byte-identical manifest.json."""
    failed = any(a.gate.get("status") in ("fail", "error") for a in artifacts) or not artifacts
    ran = any(a.gate.get("status") == "pass" for a in artifacts)
    return {
        "manifest_version": MANIFEST_VERSION,
        "name": config.name,
        "status": "failed" if failed or not ran else "passed",
        "diagnosis": diagnosis,  # where a failed build lost it, in one line (None when it passed)
        "pipeline": manager.pipeline_string(),
        "config": config.model_dump(mode="json", by_alias=True, exclude={"base_dir"}),
        "config_sha256": config_digest(config),  # what every artifact's metadata carries (deployc.config_sha256)
        "budget": {
            "max_drift": config.validate_.max_drift,
            "drift_units": metric.name,  # drift is in the metric's own units, not a fraction of it
            "min_int8_coverage": config.validate_.min_int8_coverage,
        },
        "reference": {
            "metric": metric.name,
            "value": reference.value,
            "source": validation.source,
            "samples": len(validation),
            "higher_is_better": metric.higher_is_better,
            "outputs": reference.names,
            "metric_outputs": [reference.names[i] for i in reference.covered],  # what the metric reads
            "parts": {p.name: p.to_json() for p in reference.parts},  # channel groups judged apart (cosine/mse)
        },
        "artifacts": [artifact_entry(a, out_dir) for a in artifacts],
        "passes": [r.stable_json() for r in state.history],  # the pipeline's; each artifact lists its target's
        "versions": library_versions(),
    }
