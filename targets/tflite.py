"""Target `tflite`: .tflite flatbuffers (fp32, fp16 weights, dynamic int8, full int8) lowered from the torch
level with litert-torch, quantized with ai-edge-quantizer, run with ai-edge-litert's Interpreter."""

from __future__ import annotations

import collections
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deployc.compiler.contracts import Artifact, Context, Remedy, Target
from deployc.core.state import ModelState, PassRecord
from deployc.errors import UsageError
from deployc.passes.coverage import coverage_details
from deployc.targets.tflite_coverage import tflite_int8_coverage
from deployc.targets.tflite_remedies import STAGES, float_scope, ranges_for, tflite_remedies
from deployc.targets.tflite_transformer import smooth_module, transformer_ops, transformer_recipe

Precision = Literal["fp32", "fp16", "dynamic", "int8"]
SIGNATURE = "serving_default"  # the one signature litert_torch.convert gives a module
_INT_TYPES = {"INT8", "UINT8", "INT16", "INT32", "INT64", "INT4", "BOOL"}


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


def _interpreter_module() -> tuple[Any, str, str]:
    """(interpreter module, runtime name, version): ai-edge-litert, else the older tflite-runtime."""
    for module, dist in (
        ("ai_edge_litert.interpreter", "ai-edge-litert"),
        ("tflite_runtime.interpreter", "tflite-runtime"),
    ):
        try:
            return importlib.import_module(module), dist, importlib.metadata.version(dist)
        except ImportError:
            continue
    raise ImportError("neither ai-edge-litert nor tflite-runtime is installed")


@contextmanager
def _quiet_fds() -> Iterator[Path]:
    """Send fd 1/2 to a file while converting: the converter's C++ and progress logs bypass sys.stderr."""
    with tempfile.TemporaryDirectory(prefix="deployc-") as d:
        log = Path(d) / "log.txt"
        saved = [os.dup(1), os.dup(2)]
        with open(log, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield log
            finally:
                sys.stdout.flush()  # Python-level buffers would otherwise reach the console after the restore
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)


def _tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(text[-lines:])


def convert_fp32(state: ModelState) -> bytes:
    """The float flatbuffer of the torch module, traced at batch 1 (TFLite models here have fixed shapes)."""

    sample = state.example_tensors(batch=1)
    with _quiet_fds() as log:
        try:
            import litert_torch

            return bytes(litert_torch.convert(state.module.eval(), sample).model_content())
        except Exception as exc:
            detail = _tail(log)
            raise UsageError(
                f"targets.tflite: litert-torch could not convert the model: {type(exc).__name__}: "
                f"{str(exc)[:300]}" + (f" (log: {detail})" if detail else "")
            ) from exc


def smoothed_flatbuffer(state: ModelState, ctx: Context, alpha: float) -> tuple[bytes, int]:
    """The float flatbuffer of the module with its Linear layers smoothed on the calibration samples (quantize.
    smoothing), and how many layers were smoothed."""
    import torch

    if ctx.calibration is None or len(ctx.calibration) == 0:
        raise UsageError("targets.tflite: quantize.smoothing needs calibration data: set data.calibration")
    samples = ctx.calibration.take(ctx.config.quantize.samples)
    batches = [tuple(torch.from_numpy(x[s.name]) for s in state.inputs) for x, _ in samples.batches(16)]
    module, smoothed = smooth_module(state.module, batches, alpha)
    return convert_fp32(state.replace(module=module)), smoothed


def _signature_names(model: bytes, kind: str) -> list[str]:
    """Signature input/output names in argument order (args_0, args_1, ...)."""
    interp, _, _ = _interpreter_module()
    names = interp.Interpreter(model_content=model).get_signature_list()[SIGNATURE][kind]
    return sorted(names, key=lambda n: int(n.rsplit("_", 1)[-1]) if n.rsplit("_", 1)[-1].isdigit() else 0)


def _signature_dtypes(model: bytes) -> dict[str, np.dtype]:
    interp, _, _ = _interpreter_module()
    details = interp.Interpreter(model_content=model).get_signature_runner(SIGNATURE).get_input_details()
    return {key: np.dtype(d["dtype"]) for key, d in details.items()}


def as_signature_dtype(values: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """`values` in the dtype the flatbuffer's signature takes: litert-torch makes int64 inputs (token ids, masks)
    int32, and the calibrator, unlike the interpreter's callers, feeds arrays as they are."""
    if values.dtype == dtype:
        return values
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise UsageError(
                f"targets.tflite: input '{name}' holds values outside {dtype.name}, its type in the .tflite"
            )
    return values.astype(dtype)


def recipe_for(precision: str, ctx: Context, io_dtype: str, fp32: bytes) -> tuple[Any, list[str]]:
    """A RecipeManager realising the build's quantization spec, and notes on what the quantizer cannot realise
    (int8 of a graph with attention: targets/tflite_transformer.py)."""
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.quantizer import AlgorithmName

    spec = ctx.config.quantize
    options = ctx.remedy.options if ctx.remedy is not None else {}
    granularity = qtyping.QuantGranularity.CHANNELWISE if spec.per_channel else qtyping.QuantGranularity.TENSORWISE
    manager = recipe_manager.RecipeManager()
    notes: list[str] = []
    ops = qtyping.TFLOperationName
    if precision == "fp16":
        fp16 = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        )
        for op in (
            ops.FULLY_CONNECTED,
            ops.CONV_2D,
            ops.DEPTHWISE_CONV_2D,
            ops.CONV_2D_TRANSPOSE,
            ops.EMBEDDING_LOOKUP,
        ):
            manager.add_quantization_config(".*", op, fp16, AlgorithmName.FLOAT_CASTING)
    elif precision == "dynamic":
        manager.add_dynamic_config(".*", ops.ALL_SUPPORTED, 8, granularity, AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    elif (found := transformer_ops(fp32))[0]:
        attention, gelu_fed = found
        transformer_recipe(manager, granularity, gelu_fed)
        notes.append(
            f"transformer graph ({attention} attention blocks): FULLY_CONNECTED static int8 except the {len(gelu_fed)} "
            "that read a GELU (dynamic-range: int8 weights, inputs quantized at run time), embedding tables int8 "
            "weight-only; attention scores, softmax, LayerNorm and residual adds stay float (details.npu.float_ops), "
            "so inputs and outputs stay float"
        )
    else:  # the static_wi8_ai8 recipe, with the spec's weight granularity
        manager.add_static_config(".*", ops.ALL_SUPPORTED, 8, 8, granularity, AlgorithmName.MIN_MAX_UNIFORM_QUANT)
        if io_dtype == "float32":  # graph inputs/outputs stay float; QUANTIZE/DEQUANTIZE ops at the edges
            for op in (ops.INPUT, ops.OUTPUT):
                manager.add_quantization_config(".*", op, None, AlgorithmName.NO_QUANTIZE)
        weights = options.get("weights", "min_max")
        if weights != "min_max":  # MSE/OCTAV clip the weight ranges of the weighted ops only
            algorithm = AlgorithmName.MSE if weights == "mse" else AlgorithmName.OCTAV
            for op in (ops.FULLY_CONNECTED, ops.CONV_2D, ops.DEPTHWISE_CONV_2D, ops.CONV_2D_TRANSPOSE):
                manager.add_static_config(".*", op, 8, 8, granularity, algorithm)
        for tensor in options.get("float_tensors", []):  # fallback: the ops writing these tensors stay float
            manager.add_quantization_config(float_scope(tensor), ops.ALL_SUPPORTED, None, AlgorithmName.NO_QUANTIZE)
        if spec.calibration != "minmax" and "ranges" not in options:
            notes.append(
                f"calibration '{spec.calibration}': ai-edge-quantizer has no such range estimator; "
                "used its moving-average min/max, which also clips rare extremes"
            )
        if spec.symmetric_activations:
            notes.append("symmetric_activations ignored: LiteRT int8 activation kernels are asymmetric")
    if spec.exclude and precision != "fp32":
        notes.append("quantize.exclude names ONNX nodes; TFLite tensors are named differently, nothing excluded")
    return manager, notes


def signature_feeds(fp32: bytes, samples: Any, input_names: list[str]) -> list[dict[str, np.ndarray]]:
    """One signature-runner feed per sample (the flatbuffer has batch 1), in the signature's dtypes."""
    keys = _signature_names(fp32, "inputs")
    dtypes = _signature_dtypes(fp32)
    arrays = {key: as_signature_dtype(samples.inputs[name], dtypes[key], name) for key, name in zip(keys, input_names)}
    return [{key: a[i : i + 1] for key, a in arrays.items()} for i in range(len(samples))]


def calibrate(fp32: bytes, manager: Any, ctx: Context, input_names: list[str]) -> tuple[dict[str, Any], int]:
    """Activation ranges from ctx.calibration, one sample per invoke (the flatbuffer has batch 1)."""
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    if ctx.calibration is None or len(ctx.calibration) == 0:
        raise UsageError("targets.tflite: int8 needs calibration data: set data.calibration")
    samples = ctx.calibration.take(ctx.config.quantize.samples)
    feeds = signature_feeds(fp32, samples, input_names)
    # 'minmax' means the global range; the quantizer's default is a moving average that clips the extremes
    options = ctx.remedy.options if ctx.remedy is not None else {}
    ranges = ranges_for(ctx.config.quantize.calibration, options)
    update = qsv_utils.min_max_update if ranges == "min_max" else qsv_utils.moving_average_update
    calib = calibrator.Calibrator(fp32, num_threads=1, qsv_update_func=update)
    calib.calibrate({SIGNATURE: feeds}, manager)
    return calib.get_model_qsvs(), len(samples)


def quantize_flatbuffer(
    fp32: bytes, precision: str, ctx: Context, io_dtype: str, input_names: list[str]
) -> tuple[bytes, dict[str, Any]]:
    """fp32 flatbuffer → quantized flatbuffer via ai-edge-quantizer; calibrates on ctx.calibration for int8."""
    if precision == "fp32":
        return fp32, {}
    from ai_edge_quantizer import quantizer

    manager, notes = recipe_for(precision, ctx, io_dtype, fp32)
    q = quantizer.Quantizer(bytearray(fp32), manager.get_quantization_recipe())
    details: dict[str, Any] = {
        "quantizer": f"ai-edge-quantizer {importlib.metadata.version('ai-edge-quantizer')}",
        "per_channel": ctx.config.quantize.per_channel,
    }
    ctx.instruments.log(f"tflite/{precision}: quantizing with ai-edge-quantizer …")
    with _quiet_fds() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the calibrator's "preserve_all_tensors is for debugging" notice
        try:
            ranges = None
            if q.need_calibration:
                ranges, details["calibration_samples"] = calibrate(fp32, manager, ctx, input_names)
            result = q.quantize(ranges, enable_progress_report=False)
        except UsageError:
            raise
        except Exception as exc:
            detail = _tail(log)
            raise UsageError(
                f"targets.tflite: ai-edge-quantizer failed for {precision}: {type(exc).__name__}: "
                f"{str(exc)[:300]}" + (f" (log: {detail})" if detail else "")
            ) from exc
    if notes:
        details["notes"] = notes
    return bytes(result.quantized_model), details


def op_report(model: bytes) -> tuple[dict[str, int], list[dict[str, Any]], list[str]]:
    """Op counts, the ops that touch a float tensor (float islands), and the float graph-edge conversions."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    m = fb.convert_bytearray_to_object(bytearray(model))
    counts: collections.Counter[str] = collections.Counter()
    islands, edges = [], []
    for sg in m.subgraphs:
        graph_io = set(sg.inputs) | set(sg.outputs)
        for i, op in enumerate(sg.operators):
            name = fb.opcode_to_name(m, op.opcodeIndex) or f"opcode_{op.opcodeIndex}"
            counts[name] += 1
            tensors = [t for t in list(op.inputs) + list(op.outputs) if t >= 0]
            floats = [t for t in tensors if fb.type_to_name(sg.tensors[t].type) not in _INT_TYPES]
            if not floats:
                continue
            if name in ("QUANTIZE", "DEQUANTIZE") and all(t in graph_io for t in floats):
                edges.append(f"{name}#{i}")
                continue
            islands.append({"op": name, "index": i, "float_tensors": [_tensor_name(sg.tensors[t]) for t in floats]})
    return dict(sorted(counts.items())), islands, edges


def _tensor_name(tensor: Any) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)


def npu_profile(model: bytes) -> dict[str, Any]:
    """Is every op integer-only? NPUs and delegates reject float islands and fall back to the CPU."""
    _, islands, edges = op_report(model)
    return {"integer_only": not islands, "float_ops": islands, "float_io_conversions": edges}


def _quantization(detail: dict[str, Any]) -> dict[str, Any] | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if not scale:
        return None
    return {"scale": float(scale), "zero_point": int(zero_point), "dtype": np.dtype(detail["dtype"]).name}


def io_entries(model: bytes, state: ModelState) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Manifest entries for the signature's inputs/outputs, with the scale/zero point an app must apply."""
    interp_mod, _, _ = _interpreter_module()
    runner = interp_mod.Interpreter(model_content=model).get_signature_runner(SIGNATURE)
    ins, outs = runner.get_input_details(), runner.get_output_details()

    def entry(key: str, d: dict[str, Any], name: str) -> dict[str, Any]:
        return {
            "name": name,
            "signature_key": key,
            "shape": [int(x) for x in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "quantization": _quantization(d),
        }

    in_names = _signature_names(model, "inputs")
    out_names = _signature_names(model, "outputs")
    return (
        [entry(k, ins[k], s.name) for k, s in zip(in_names, state.inputs)],
        [entry(k, outs[k], k) for k in out_names],
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
            _interpreter_module()
        except ImportError as exc:
            return f"{exc} (pip install ai-edge-litert)"
        return None

    @classmethod
    def requires_for(cls, options: TfliteOptions) -> frozenset[str]:
        return frozenset({"data.calibration"}) if "int8" in options.precision else frozenset()

    def __init__(self, options: TfliteOptions):
        super().__init__(options)
        self._runners: dict[str, Any] = {}

    def remedy_stages(self, artifact: Artifact, lowered: tuple[bytes, PassRecord]) -> tuple[str, ...]:
        return STAGES if artifact.precision == "int8" and artifact.path is not None else ()

    def remedies(
        self, stage: str, base: Remedy, artifact: Artifact, lowered: tuple[bytes, PassRecord], ctx: Context
    ) -> list[Remedy]:
        spec = ctx.config.quantize.remedies
        feeds = []
        if stage == "fallback":
            names = [e["name"] for e in artifact.inputs]
            feeds = signature_feeds(lowered[0], ctx.calibration.take(spec.sensitivity_samples), names)
        return tflite_remedies(stage, base, lowered[0], artifact.path.read_bytes(), feeds, SIGNATURE, spec)

    def lower(self, state: ModelState, ctx: Context) -> tuple[bytes, PassRecord]:
        if state.module is None:
            raise UsageError("targets.tflite: needs the torch model (model.factory or model.exported)")
        t0 = time.perf_counter()
        ctx.instruments.log("tflite: converting the model with litert-torch …")
        fp32 = convert_fp32(state)
        # the target's own passes enter each artifact's history like the pipeline's (the report lists them)
        return fp32, PassRecord(
            "litert.convert", {"batch": 1}, True, {"bytes": len(fp32)}, seconds=time.perf_counter() - t0
        )

    def emit(self, state: ModelState, lowered: tuple[bytes, PassRecord], ctx: Context, precision: str) -> Artifact:
        fp32, converted = lowered
        _, runtime, version = _interpreter_module()
        t0 = time.perf_counter()
        smoothing = ctx.config.quantize.smoothing if precision == "int8" else None
        if smoothing is not None:  # SmoothQuant at the torch level, then lowered again for this artifact
            fp32, smoothed = smoothed_flatbuffer(state, ctx, smoothing)
        model, details = quantize_flatbuffer(
            fp32, precision, ctx, self.options.io_dtype, [s.name for s in state.inputs]
        )
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
        path = ctx.work_dir / "tflite" / f"{ctx.config.name}.{precision}.tflite"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model)
        ops, _, _ = op_report(model)
        details = {"converter": f"litert-torch {importlib.metadata.version('litert-torch')}", "ops": ops, **details}
        if precision in ("int8", "dynamic"):
            details.update(coverage_details(tflite_int8_coverage(model), f"tflite/{precision}", ctx.instruments.log))
        ins, outs = io_entries(model, state)
        if precision == "int8":  # what the flatbuffer takes and gives (float for a transformer's int8)
            details["io_dtype"] = "int8" if any(e["quantization"] for e in ins + outs) else "float32"
            details["npu"] = npu = npu_profile(model)
            if self.options.npu_strict and not npu["integer_only"]:
                listed = ", ".join(f"{o['op']}#{o['index']}" for o in npu["float_ops"])
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
            interp_mod, _, _ = _interpreter_module()
            interp = interp_mod.Interpreter(model_path=key, num_threads=self.options.threads)
            self._runners[key] = interp.get_signature_runner(SIGNATURE)
        return self._runners[key]

    def infer(self, artifact: Artifact, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Per sample (the flatbuffer has batch 1): quantize float inputs, dequantize outputs, stack."""
        runner = self._runner(artifact)
        n = len(next(iter(batch.values())))
        rows: list[list[np.ndarray]] = []
        for i in range(n):
            feeds = {e["signature_key"]: _to_tensor(batch[e["name"]][i : i + 1], e) for e in artifact.inputs}
            out = runner(**feeds)
            rows.append([_from_tensor(out[e["signature_key"]], e) for e in artifact.outputs])
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
