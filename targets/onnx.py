"""Target `onnx`: ONNX artifacts (fp32, fp16, int8 QDQ, dynamic int8) run with onnxruntime's CPU EP (and OpenVINO)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployc.compiler.contracts import Artifact, Context, Remedy, Target, precision_parts
from deployc.compiler.manager import run_pass
from deployc.compiler.registry import get_pass
from deployc.core.config import REMEDY_STAGES
from deployc.core.ort import session
from deployc.core.state import ModelState
from deployc.errors import UsageError
from deployc.passes.coverage import Int8Coverage, percent
from deployc.passes.cpu_int8 import CpuInt8, CpuInt8Config, CpuName, Placement, profile, quantizer_settings
from deployc.passes.export import ExportConfig, ExportOnnx
from deployc.passes.onnx_util import io_specs, op_counts
from deployc.passes.sensitivity import QUANTIZABLE, fallback_units
from deployc.passes.simplify import Simplify, SimplifyConfig
from deployc.passes.tensorrt_qdq import WEIGHTED
from deployc.targets import onnx_openvino as ov_runtime
from deployc.targets.metadata import artifact_metadata, name_outputs, output_names, save_onnx, with_layout
from deployc.targets.quantized_details import (
    DYNAMIC_OPS,
    NothingInInt8,
    float_reasons,
    int8_coverage_of,
    merged,
    quantized_details,
)
from deployc.validation.remedies import fallback_remedy, fallback_steps, spec_remedies

Precision = Literal["fp32", "fp16", "int8", "dynamic"]
Runtime = Literal["onnxruntime", "openvino"]
Int8Placement = Literal["auto", "onnxruntime", "openvino"]  # auto: each runtime's own (one int8 file per runtime)
OPENVINO = ov_runtime.RUNTIME
PLACEMENT_RULES = {  # what each int8 placement does (passes/cpu_int8.py, passes/openvino_qdq.py)
    "onnxruntime": "Q/DQ on the inputs and output of every quantizable op (onnxruntime's QLinear kernels)",
    "openvino": "Q/DQ on the inputs of Conv/Gemm/MatMul, residual Adds and mean pools, one range per Concat, none into "
    "a Pad (what OpenVINO fuses)",
}


def _split(precision: str) -> tuple[str, str]:
    """('int8', 'openvino') for the row 'int8@openvino', ('int8', 'onnxruntime') for 'int8'."""
    kind, runtime = precision_parts(precision)
    return kind, runtime or "onnxruntime"


CHANNEL_PROBE_SAMPLES = 16  # calibration samples the per-tensor channel-range warnings look at
NEGLIGIBLE_INT8 = 0.01  # a dynamic artifact with less than 1% of its MACs (or weights) in int8 is not worth a file


def _negligible(coverage: Int8Coverage) -> bool:
    return not coverage.int8_ops or (coverage.share is not None and coverage.share < NEGLIGIBLE_INT8)


def _what_becomes_int8(coverage: Int8Coverage) -> str:
    if not coverage.int8_ops or not coverage.share:
        return "no weight of this graph becomes int8"
    unit = "MACs" if coverage.macs is not None else "weights"
    share = percent(coverage.share) if coverage.share >= 0.0001 else "less than 0.01%"
    return f"only {share} of this graph's {unit} become int8"


class OnnxOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    precision: list[Precision] = Field(default_factory=lambda: ["fp32"], min_length=1)
    threads: int | None = Field(None, ge=1, description="onnxruntime intra-op threads; default: all cores")
    simplify: bool = Field(True, description="run the simplify pass before emitting")
    opset: int = Field(18, ge=17, le=23, description="opset used when this target exports the torch model itself")
    cpu: CpuName = Field(
        "auto", description="CPU the int8 artifact is tuned for (passes/cpu_int8.py); auto: the build machine's"
    )
    int8_placement: Int8Placement = Field(
        "auto",
        description="whose int8 fusions the int8 Q/DQ follow (passes/openvino_qdq.py): onnxruntime (its QLinear "
        "kernels, Q/DQ on every op's output) or openvino (Q/DQ only on Conv/Gemm/MatMul inputs, one scale per Concat; "
        "onnxruntime then runs YOLOv8n's Convs in float, 3x slower), each one int8 file that every runtime in "
        "`runtimes` validates; auto (default): one int8 file per runtime in `runtimes`, each with its own runtime's "
        "placement: 'int8' for onnxruntime and, with openvino listed, 'int8@openvino' (<name>.int8.openvino.onnx)",
    )
    runtimes: list[Runtime] = Field(
        default_factory=lambda: ["onnxruntime"],
        description="runtimes each artifact is validated and timed on; openvino (the `openvino` extra) adds a row "
        "'<precision>@openvino' per artifact, run with f32 inference precision: the same file as the onnxruntime row, "
        "except int8 with int8_placement: auto, which gets its own file",
    )

    @field_validator("runtimes")
    @classmethod
    def _onnxruntime_first(cls, runtimes: list[str]) -> list[str]:
        if not runtimes or runtimes[0] != "onnxruntime" or len(set(runtimes)) != len(runtimes):
            raise ValueError("list onnxruntime first (it builds and remedies the artifacts), each runtime once")
        return runtimes


def lower_to_onnx(state: ModelState, ctx: Context, opset: int, simplify: bool) -> ModelState:
    """The state with an ONNX graph: exported (when only torch exists) and simplified (once), its outputs named as
    on every target (targets/metadata.py: output_names)."""
    if state.onnx is None:
        state = run_pass(ExportOnnx(ExportConfig(opset=opset)), state, ctx)
    if simplify and "simplified" not in state.facts:
        state = run_pass(Simplify(SimplifyConfig()), state, ctx)
    names = output_names(ctx, len(state.onnx.graph.output))
    return state.replace(onnx=name_outputs(state.onnx, names))


def quantize_for(precision: str, state: ModelState, ctx: Context, **settings: Any) -> ModelState:
    """Realise the build's quantization spec at `precision` with the matching quantize.* pass; `settings`
    are target-specific options of that pass (e.g. reduce_range for a CPU).

    After the qat pass the graph already carries the QDQ ranges QAT learned, so int8 is the lowered graph itself.
    """
    if precision == "fp32":
        return state
    if "qat" in state.facts:
        if precision == "int8":
            return state
        raise UsageError(
            f"targets.onnx.precision: '{precision}' after the qat pass: the model already carries "
            f"int8 quantize/dequantize from QAT; ask for int8"
        )
    pass_cls = get_pass(f"quantize.{precision}")
    config = pass_cls.Config.model_validate({**ctx.config.quantize.model_dump(exclude={"remedies"}), **settings})
    return run_pass(pass_cls(config), state, ctx)


def _int8_notes(label: str, base: ModelState, done: ModelState, ctx: Context) -> dict[str, Any]:
    """Tuning summary and known-trap warnings for an int8 artifact (empty for other precisions)."""
    if label != "int8" or ctx.calibration is None:
        return {}
    from deployc.passes.quantize_checks import channel_range_warnings

    notes: dict[str, Any] = {}
    fp32 = base.onnx if "quantized" not in base.facts else None  # after qat / quantize.* passes there is no fp32 graph
    if fp32 is not None:
        # a channel's range shows in a few samples; every layer's output on 64 of them cost ResNet-18 4.6 s
        probe = ctx.calibration.take(min(ctx.config.quantize.samples, CHANNEL_PROBE_SAMPLES))
        warnings = channel_range_warnings(fp32, done.onnx, probe, ctx.config.quantize.channel_range_ratio)
        for w in warnings:
            ctx.instruments.log(f"warning: onnx/int8: {w}")
        if warnings:
            notes["warnings"] = warnings
    return notes


def has_weight_matmul(proto: Any) -> bool:
    """A MatMul/Gemm on a constant weight: what SmoothQuant-style smoothing acts on."""
    inits = {i.name for i in proto.graph.initializer}
    return any(n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits for n in proto.graph.node)


def onnx_remedies(
    stage: str,
    base: Remedy,
    fp32: ModelState,
    int8: Callable[[Remedy], ModelState],
    ctx: Context,
    how: str,
    weighted_first: bool = False,
) -> list[Remedy]:
    """The remedies a Q/DQ ONNX target realises (onnx, tensorrt): spec changes, and fallback of the nodes around the
    tensors the best trial damages most (ranked from one fp32 and one int8 run on calibration samples)."""
    spec = ctx.config.quantize.remedies
    assert spec != "off"
    if stage == "smoothing" and not has_weight_matmul(fp32.onnx):
        return []
    if stage != "fallback":
        return spec_remedies(stage, base, list(spec.methods), spec.smoothing_alpha)
    probe = ctx.calibration.take(spec.sensitivity_samples)
    quantized = int8(base)
    units = fallback_units(fp32.onnx, quantized.onnx, probe)
    # already float: excluded by the spec, or Concats quantize.int8 kept float by their ranges
    kept = set(base.spec.exclude) | {n for r in quantized.history for n in r.metrics.get("concats_kept_float", {})}
    units = [[n for n in u if n not in kept] for u in units]
    steps = fallback_steps([u for u in units if u], spec.max_fallback)
    surgical = [fallback_remedy(base, layers, how, exclude=list(base.spec.exclude) + layers) for layers in steps]
    return (weighted_only(base, fp32.onnx, kept) if weighted_first else []) + surgical


def weighted_only(base: Remedy, proto: Any, kept: set[str]) -> list[Remedy]:
    """The first fallback trial: every quantizable op but the weighted ones (Conv/MatMul/Gemm) in float. It keeps
    every int8 MAC, so it costs less coverage than any layer fallback; it recovers graphs whose damage is spread
    over elementwise ops: Magika's decomposed LayerNorm (Square, Rsqrt) and its activation's Exp. Not for
    tensorrt, whose placement already quantizes the inputs of weighted ops only."""
    rest = [n.name for n in proto.graph.node if n.name and n.op_type in QUANTIZABLE - WEIGHTED and n.name not in kept]
    if not rest:
        return []
    spec = base.spec.model_copy(update={"exclude": list(base.spec.exclude) + rest})
    change = f"{len(rest)} op(s) in fp32: all but Conv/MatMul/Gemm (every int8 MAC kept)"
    return [Remedy("fallback", change, spec, dict(base.options), tuple(rest))]


class OnnxTarget(Target):
    name = "onnx"
    Options = OnnxOptions
    quantize_fields = frozenset({"smoothing"})  # SmoothQuant before its int8 Q/DQ

    def remedy_stages(self, artifact: Artifact, lowered: ModelState) -> tuple[str, ...]:
        # int8 quantized here: not a graph a pass already quantized (qat, quantize.*), which carries its own ranges
        quantized_here = artifact.kind == "int8" and "quantized" not in lowered.facts and "qat" not in lowered.facts
        return REMEDY_STAGES if quantized_here and artifact.path is not None else ()

    def remedies(self, stage: str, base: Remedy, artifact: Artifact, lowered: ModelState, ctx: Context) -> list[Remedy]:
        settings = quantizer_settings(self.options.cpu, self.placement(_split(artifact.precision)[1]))

        def int8(remedy: Remedy) -> ModelState:  # the trial's graph before CPU tuning (the pass memo has it)
            return quantize_for("int8", lowered, ctx.for_remedy(remedy, ctx.work_dir), **settings)

        return onnx_remedies(stage, base, lowered, int8, ctx, "fp32", weighted_first=True)

    @classmethod
    def requires_for(cls, options: OnnxOptions) -> frozenset[str]:
        needs: set[str] = set()
        for precision in options.precision:
            if precision != "fp32":
                needs |= get_pass(f"quantize.{precision}").requires - {"onnx"}
        return frozenset(needs)

    def __init__(self, options: OnnxOptions):
        super().__init__(options)
        self._sessions: dict[str, Any] = {}
        self._scored: set[str] = set()  # artifacts whose runs are scored, not timed (Target.scored_only)

    def placement(self, runtime: str) -> Placement:
        """The Q/DQ placement of the int8 file `runtime` validates: the configured one, or with auto its own."""
        chosen = self.options.int8_placement
        return runtime if chosen == "auto" else chosen  # type: ignore[return-value]

    def own_int8_files(self) -> list[str]:
        """Runtimes besides onnxruntime that get an int8 file of their own (int8_placement: auto)."""
        if self.options.int8_placement != "auto" or "int8" not in self.options.precision:
            return []
        return [r for r in self.options.runtimes if r != "onnxruntime"]

    def precisions(self) -> list[str]:
        """The configured precisions, each runtime's own int8 file right after int8 ('int8@openvino')."""
        own = [f"int8@{r}" for r in self.own_int8_files()]
        return [q for p in self.options.precision for q in ([p, *own] if p == "int8" else [p])]

    def lower(self, state: ModelState, ctx: Context) -> ModelState:
        return lower_to_onnx(state, ctx, self.options.opset, self.options.simplify)

    def emit(self, state: ModelState, base: ModelState, ctx: Context, precision: str) -> Artifact:
        precision, runtime = _split(precision)
        placement = self.placement(runtime)
        already = next((f.split(":", 1)[1] for f in base.facts if f.startswith("precision:")), None)
        settings = quantizer_settings(self.options.cpu, placement) if precision == "int8" else {}
        done = quantize_for(precision, base, ctx, **settings)
        label = already if precision == "fp32" and already else precision
        if label == "int8" and "qat" in base.facts and profile(self.options.cpu).reduce_range:
            ctx.instruments.log(
                "warning: onnx/int8: the QAT graph carries full 8-bit weights, which onnxruntime's u8s8 kernels can "
                "saturate on an x86 CPU without VNNI (such as this one); the gate measures the result here"
            )
        if label == "int8":  # CPU-specific graph tuning and the float-island check (passes/cpu_int8.py)
            done = run_pass(CpuInt8(CpuInt8Config(cpu=self.options.cpu, placement=placement)), done, ctx)
        coverage = int8_coverage_of(label, done, ctx)
        if label == "dynamic" and coverage is not None and _negligible(coverage):
            return self._artifact(
                label,
                None,
                runtime,
                details={"int8_coverage": coverage.to_json()},
                skipped=f"not emitted: {_what_becomes_int8(coverage)} ({DYNAMIC_OPS}; "
                f"{float_reasons('onnx/dynamic', coverage, [], done.onnx) or 'the graph has no weighted op'}); "
                "it would be the fp32 "
                "graph under another name, no smaller and no faster",
            )
        if coverage is not None and not coverage.int8_ops:
            raise NothingInInt8(coverage, float_reasons(f"onnx/{label}", coverage, list(done.history), done.onnx))
        own = runtime != "onnxruntime"  # a file for that runtime alone (int8_placement: auto)
        row = f"{label}@{runtime}" if own else label
        path = ctx.work_dir / "onnx" / f"{ctx.config.name}.{label}{f'.{runtime}' if own else ''}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        ins, outs = (with_layout(e) for e in io_specs(done.onnx))
        metadata = artifact_metadata(ctx, self.name, row, ins, outs)
        save_onnx(done.onnx, path, metadata)
        notes = _int8_notes(label, base, done, ctx) if not own else {}  # the same ranges: warned once, on 'int8'
        return self._artifact(
            row,
            path,
            runtime,
            inputs=ins,
            outputs=outs,
            details={
                "opset": next((o.version for o in done.onnx.opset_import if o.domain in ("", "ai.onnx")), None),
                "ops": op_counts(done.onnx),
                **self._how(runtime),
                **(
                    {"int8_placement": {"runtime": placement, "rules": PLACEMENT_RULES[placement]}}
                    if label == "int8"
                    else {}
                ),
                "metadata": metadata,
                **merged(notes, quantized_details(f"onnx/{row}", coverage, base, done, ctx)),
            },
            perf={"int8_tuned_for": profile(self.options.cpu, placement).describe()} if label == "int8" else {},
            history=done.history[len(state.history) :],
        )

    def _artifact(self, precision: str, path: Any, runtime: str, **fields: Any) -> Artifact:
        """An artifact row run on `runtime` (skipped, with the reason, when that runtime is missing here)."""
        import onnxruntime

        if runtime == OPENVINO:
            version, missing = ov_runtime.openvino_version(), ov_runtime.openvino_missing()
        else:
            version, missing = onnxruntime.__version__, None
        skipped = fields.pop("skipped", None) or missing
        return Artifact(self.name, precision, path, runtime, version, skipped=skipped, **fields)

    def _how(self, runtime: str) -> dict[str, Any]:
        """How `runtime` runs a row (what its gate and latency measure)."""
        how = ov_runtime.openvino_details() if runtime == OPENVINO else {"execution_provider": "CPUExecutionProvider"}
        return {**how, "threads": self.options.threads}

    def build(self, state: ModelState, ctx: Context, finish: Any = None) -> list[Artifact]:
        artifacts = super().build(state, ctx, finish)
        if OPENVINO not in self.options.runtimes:
            return artifacts
        done = finish or (lambda art, reemit, lowered: art)
        own = {a.precision for a in artifacts if a.runtime == OPENVINO}
        twins = [a for a in artifacts if a.path is not None and a.runtime == "onnxruntime"]
        return artifacts + [
            done(ov_runtime.on_openvino(a), None, None) for a in twins if f"{a.precision}{ov_runtime.SUFFIX}" not in own
        ]

    def scored_only(self, artifact: Artifact) -> None:
        self._scored.add(f"{artifact.runtime}:{artifact.path}")

    def infer(self, artifact: Artifact, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        key = f"{artifact.runtime}:{artifact.path}"
        if key not in self._sessions and artifact.runtime == OPENVINO:
            self._sessions[key] = ov_runtime.openvino_model(str(artifact.path), self.options.threads)
        elif key not in self._sessions:  # a scored-only run's idle threads sleep: same outputs, less CPU
            self._sessions[key] = session(str(artifact.path), self.options.threads, spin=key not in self._scored)
        if artifact.runtime == OPENVINO:
            result = self._sessions[key](batch)
            return [np.asarray(result[out]) for out in self._sessions[key].outputs]
        return self._sessions[key].run(None, batch)

    def close(self, artifact: Artifact) -> None:
        self._sessions.pop(f"{artifact.runtime}:{artifact.path}", None)
        self._scored.discard(f"{artifact.runtime}:{artifact.path}")
