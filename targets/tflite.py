"""Target `tflite`: .tflite flatbuffers (fp32, fp16 weights, dynamic int8, full int8) lowered from the torch
level with litert-torch, quantized with ai-edge-quantizer, run with ai-edge-litert's Interpreter."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import time
from typing import Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployc.compiler.contracts import Artifact, Context, Remedy, Target
from deployc.core import memory
from deployc.core.config import each_once
from deployc.core.state import ModelState, PassRecord
from deployc.errors import UsageError
from deployc.passes.coverage import coverage_details
from deployc.targets.metadata import artifact_metadata, output_names
from deployc.targets.tflite_coverage import tflite_int8_coverage
from deployc.targets.tflite_export import EdgeSignature, Layout, edge_module, edge_signature, from_layout, to_layout
from deployc.targets.tflite_flatbuffer import activations, name_io_tensors, with_metadata
from deployc.targets.tflite_npu import npu_profile, npu_summary, op_report
from deployc.targets.tflite_quantize import quantize_flatbuffer, signature_feeds
from deployc.targets.tflite_remedies import STAGES, tflite_remedies
from deployc.targets.tflite_runtime import SIGNATURE, interpreter_module, library_failure, quiet_fds
from deployc.targets.tflite_transformer import smooth_module
from deployc.targets.vela import Accelerator, vela_missing

Precision = Literal["fp32", "fp16", "dynamic", "int8"]


class TfliteOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    precision: list[Precision] = Field(
        default_factory=lambda: ["fp32"],
        min_length=1,
        description="fp32 | fp16 (weights) | dynamic (int8 weights) | int8 (full integer)",
    )
    io_dtype: Literal["int8", "float32"] = Field("int8", description="input/output type of the full-int8 model")
    npu_strict: bool = Field(
        False, description="refuse a full-int8 model that keeps float ops: its artifact gets gate 'error'"
    )
    threads: int | None = Field(None, ge=1, description="interpreter threads; default: the runtime's choice")
    layout: Layout = Field(
        "nhwc",
        description="layout of the .tflite's 4-D inputs and outputs: nhwc (channels-last, what TFLite kernels and "
        "NPUs compute in: no Transpose at the edges) or nchw (the PyTorch model's)",
    )
    npu: list[Accelerator] = Field(
        default_factory=list,
        description="Ethos-U accelerators Vela compiles every int8 artifact for (ops on NPU/CPU with reasons, "
        "estimated time, SRAM, flash; pip install 'deployc[npu]'); [] : the integer-only quick check alone",
    )

    @field_validator("npu")
    @classmethod
    def _once(cls, npu: list[str]) -> list[str]:
        return each_once(npu, "an accelerator")


class Lowered(NamedTuple):
    """What every precision of one build shares: the float flatbuffer, its conversion record, its signature."""

    fp32: bytes
    record: PassRecord
    signature: EdgeSignature


def convert_fp32(state: ModelState, signature: EdgeSignature) -> bytes:
    """The float flatbuffer of the torch module, traced at batch 1 (TFLite models here have fixed shapes), with the
    signature's names and layouts (targets/tflite_export.py). When TRANSPOSEs remain, litert's greedy layout
    partitioner is tried too and the one with fewer kept: its default min-cut keeps a reduction in NCHW when the
    tensor it reduces is also an NHWC output (one TRANSPOSE the greedy one avoids)."""
    with quiet_fds() as log:
        try:
            module, kwargs = edge_module(state, signature)
            best = _converted(module, kwargs, None)
            if transposes(best):
                greedy = _converted(module, kwargs, "GREEDY")
                best = greedy if transposes(greedy) < transposes(best) else best
            return name_io_tensors(best)
        except Exception as exc:
            raise library_failure("litert-torch could not convert the model", exc, log) from exc


LAYOUT_PARTITIONER = "LAYOUT_OPTIMIZE_PARTITIONER"  # litert_torch.config reads it at conversion time


def _converted(module: Any, kwargs: dict[str, Any], partitioner: str | None) -> bytes:
    import litert_torch

    before = os.environ.get(LAYOUT_PARTITIONER)
    if partitioner is not None:
        os.environ[LAYOUT_PARTITIONER] = partitioner
    try:
        return bytes(litert_torch.convert(module, (), sample_kwargs=kwargs).model_content())
    finally:
        if before is None:
            os.environ.pop(LAYOUT_PARTITIONER, None)
        else:
            os.environ[LAYOUT_PARTITIONER] = before


def transposes(model: bytes) -> int:
    return op_report(model)[0].get("TRANSPOSE", 0)


def smoothed_flatbuffer(state: ModelState, ctx: Context, alpha: float, signature: EdgeSignature) -> tuple[bytes, int]:
    """The float flatbuffer of the module with its Linear layers smoothed on the calibration samples (quantize.
    smoothing), and how many layers were smoothed."""
    import torch

    if ctx.calibration is None or len(ctx.calibration) == 0:
        raise UsageError("targets.tflite: quantize.smoothing needs calibration data: set data.calibration")
    samples = ctx.calibration.take(ctx.config.quantize.samples)
    batches = [tuple(torch.from_numpy(x[s.name]) for s in state.inputs) for x, _ in samples.batches(16)]
    module, smoothed = smooth_module(state.module, batches, alpha)
    return convert_fp32(state.replace(module=module), signature), smoothed


def _quantization(detail: dict[str, Any]) -> dict[str, Any] | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if not scale:
        return None
    return {"scale": float(scale), "zero_point": int(zero_point), "dtype": np.dtype(detail["dtype"]).name}


def io_entries(model: bytes, signature: EdgeSignature) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Manifest entries for the signature's inputs/outputs, with their layout and the scale/zero point an app
    must apply."""
    interp_mod, _, _ = interpreter_module()
    runner = interp_mod.Interpreter(model_content=model).get_signature_runner(SIGNATURE)
    ins, outs = runner.get_input_details(), runner.get_output_details()

    def entry(name: str, d: dict[str, Any], layout: str | None) -> dict[str, Any]:
        return {
            "name": name,
            "signature_key": name,
            "shape": [int(x) for x in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "layout": layout,
            "quantization": _quantization(d),
        }

    return (
        [entry(n, ins[n], layout) for n, layout in zip(signature.inputs, signature.input_layouts)],
        [entry(n, outs[n], layout) for n, layout in zip(signature.outputs, signature.output_layouts)],
    )


class TfliteTarget(Target):
    name = "tflite"
    Options = TfliteOptions
    requires_any = (frozenset({"torch"}),)  # litert-torch lowers from the torch level, never from ONNX
    quantize_fields = frozenset({"smoothing"})  # SmoothQuant of the torch module before int8 (smoothed_flatbuffer)

    @classmethod
    def available(cls) -> str | None:
        # litert-torch takes seconds to import: check it is there, import it only when building
        for module, dist in (("litert_torch", "litert-torch"), ("ai_edge_quantizer", "ai-edge-quantizer")):
            if importlib.util.find_spec(module) is None:
                return f"{dist} is not installed (pip install {dist})"
        try:
            interpreter_module()
        except ImportError as exc:
            return f"{exc} (pip install ai-edge-litert)"
        return None

    @classmethod
    def requires_for(cls, options: TfliteOptions) -> frozenset[str]:
        return frozenset({"data.calibration"}) if "int8" in options.precision else frozenset()

    def __init__(self, options: TfliteOptions):
        super().__init__(options)
        self._runners: dict[str, Any] = {}

    def remedy_stages(self, artifact: Artifact, lowered: Lowered) -> tuple[str, ...]:
        return STAGES if artifact.precision == "int8" and artifact.path is not None else ()

    def remedies(self, stage: str, base: Remedy, artifact: Artifact, lowered: Lowered, ctx: Context) -> list[Remedy]:
        spec = ctx.config.quantize.remedies
        feeds = []
        if stage == "fallback":
            feeds = signature_feeds(lowered.fp32, ctx.calibration.take(spec.sensitivity_samples), lowered.signature)
        return tflite_remedies(stage, base, lowered.fp32, artifact.path.read_bytes(), feeds, SIGNATURE, spec)

    def lower(self, state: ModelState, ctx: Context) -> Lowered:
        if state.module is None:
            raise UsageError("targets.tflite: needs the torch model (model.factory or model.exported)")
        self._check_npu(ctx)
        t0 = time.perf_counter()
        signature = edge_signature(state, lambda count: output_names(ctx, count), self.options.layout)
        ctx.instruments.log("tflite: converting the model with litert-torch …")
        fp32 = convert_fp32(state, signature)
        config = {"batch": 1, "layout": self.options.layout}
        # the target's own passes enter each artifact's history like the pipeline's (the report lists them)
        facts = {"bytes": len(fp32), "transposes": transposes(fp32), **signature.to_json()}
        record = PassRecord("litert.convert", config, True, facts, seconds=time.perf_counter() - t0)
        return Lowered(fp32, record, signature)

    def _check_npu(self, ctx: Context) -> None:
        """validate.min_npu_ops needs Vela and an accelerator to measure with: refused before any work without."""
        if ctx.config.validate_.min_npu_ops is None or "int8" not in self.options.precision:
            return
        if not self.options.npu:
            raise UsageError(
                "validate.min_npu_ops: name the accelerators Vela checks in targets.tflite.npu (e.g. [ethos-u55-128])"
            )
        missing = vela_missing()
        if missing:
            raise UsageError(f"validate.min_npu_ops: {missing}; the share of ops on the NPU cannot be measured")

    def emit(self, state: ModelState, lowered: Lowered, ctx: Context, precision: str) -> Artifact:
        fp32, converted, signature = lowered
        _, runtime, version = interpreter_module()
        t0 = time.perf_counter()
        smoothing = ctx.config.quantize.smoothing if precision == "int8" else None
        if smoothing is not None:  # SmoothQuant at the torch level, then lowered again for this artifact
            fp32, smoothed = smoothed_flatbuffer(state, ctx, smoothing, signature)
        model, details = quantize_flatbuffer(fp32, precision, ctx, self.options.io_dtype, signature)
        if smoothing is not None:
            details["smoothing"] = {"alpha": smoothing, "linear_layers": smoothed}
        history: tuple[PassRecord, ...] = (converted,)
        if precision != "fp32":
            spec = ctx.config.quantize
            config = {"precision": precision, "per_channel": spec.per_channel, "calibration": spec.calibration}
            if precision == "int8":
                config["io_dtype"] = self.options.io_dtype
            if ctx.remedy is not None and ctx.remedy.options:
                config["remedy"] = ctx.remedy.options
            facts = {k: details[k] for k in ("calibration_samples", "notes") if k in details}
            history += (
                PassRecord(
                    "ai_edge_quantizer", config, True, {"bytes": len(model), **facts}, seconds=time.perf_counter() - t0
                ),
            )
        ins, outs = io_entries(model, signature)
        metadata = artifact_metadata(ctx, self.name, precision, ins, outs)
        model = with_metadata(model, metadata)
        path = ctx.work_dir / "tflite" / f"{ctx.config.name}.{precision}.tflite"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model)
        ops, _, _ = op_report(model)
        details = {
            "converter": f"litert-torch {importlib.metadata.version('litert-torch')}",
            "ops": ops,
            **details,
            "metadata": metadata,
        }
        if precision in ("int8", "dynamic"):
            details.update(coverage_details(tflite_int8_coverage(model), f"tflite/{precision}", ctx.instruments.log))
        if precision == "int8":  # what the flatbuffer takes and gives (float for a transformer's int8)
            details["io_dtype"] = "int8" if any(e["quantization"] for e in ins + outs) else "float32"
            details["npu"] = npu = npu_profile(model, self.options.npu)
            for name, report in npu.get("accelerators", {}).items():
                ctx.instruments.log(f"tflite/int8 on {name}: {npu_summary(report)}")
            if self.options.npu_strict and not npu["integer_only"]:
                listed = ", ".join(f"{o['op']}#{o['index']}" for o in npu["float_ops"][:10])
                listed += f" ({npu['float_op_count']} in all: {npu['float_op_types']})"
                raise UsageError(f"targets.tflite.npu_strict: the int8 model keeps float ops: {listed}")
        return Artifact(
            target=self.name,
            precision=precision,
            path=path,
            runtime=runtime,
            runtime_version=version,
            inputs=ins,
            outputs=outs,
            details=details,
            history=history,
        )

    def _runner(self, artifact: Artifact) -> Any:
        key = str(artifact.path)
        if key not in self._runners:
            interp_mod, _, _ = interpreter_module()
            interp = interp_mod.Interpreter(model_path=key, num_threads=self.options.threads)
            self._runners[key] = interp.get_signature_runner(SIGNATURE)
        return self._runners[key]

    def activations(self, artifact: Artifact, feed: dict[str, np.ndarray]) -> memory.Activations | None:
        """The flatbuffer's tensors at its own shapes (batch 1): infer() invokes it once per sample, so a batch holds
        one arena; counted per sample, which keeps batches within the budget whatever the arena planner shares."""
        return None if artifact.path is None else activations(artifact.path)

    def infer(self, artifact: Artifact, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Per sample (the flatbuffer has batch 1): NCHW to the artifact's layout, quantize float inputs, dequantize
        outputs, back to NCHW, stack."""
        runner = self._runner(artifact)
        n = len(next(iter(batch.values())))
        rows: list[list[np.ndarray]] = []
        for i in range(n):
            feeds = {
                e["signature_key"]: _to_tensor(to_layout(batch[e["name"]][i : i + 1], e.get("layout")), e)
                for e in artifact.inputs
            }
            out = runner(**feeds)
            rows.append(
                [from_layout(_from_tensor(out[e["signature_key"]], e), e.get("layout")) for e in artifact.outputs]
            )
        return [np.concatenate([r[j] for r in rows]) for j in range(len(artifact.outputs))]

    def close(self, artifact: Artifact) -> None:
        self._runners.pop(str(artifact.path), None)


def _to_tensor(x: np.ndarray, entry: dict[str, Any]) -> np.ndarray:
    q = entry["quantization"]
    if q is None:
        return x.astype(entry["dtype"], copy=False)
    info = np.iinfo(q["dtype"])
    return np.clip(np.round(x / q["scale"]) + q["zero_point"], info.min, info.max).astype(q["dtype"])


def _from_tensor(y: np.ndarray, entry: dict[str, Any]) -> np.ndarray:
    q = entry["quantization"]
    if q is None:
        return np.asarray(y, dtype=np.float32)
    return ((y.astype(np.float32) - q["zero_point"]) * q["scale"]).astype(np.float32)
