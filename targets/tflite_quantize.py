"""The tflite target's quantization with ai-edge-quantizer: the recipe realising the build's quantization spec, the
calibration feeds (in the flatbuffer's layout), the activation ranges, and the quantized flatbuffer."""

from __future__ import annotations

import importlib.metadata
import warnings
from typing import Any

import numpy as np

from deployc.compiler.contracts import Context
from deployc.errors import UsageError
from deployc.targets.tflite_export import EdgeSignature, to_layout
from deployc.targets.tflite_remedies import float_scope, ranges_for
from deployc.targets.tflite_runtime import SIGNATURE, interpreter_module, library_failure, quiet_fds
from deployc.targets.tflite_transformer import transformer_ops, transformer_recipe


def _signature_dtypes(model: bytes) -> dict[str, np.dtype]:
    interp, _, _ = interpreter_module()
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


def signature_feeds(fp32: bytes, samples: Any, signature: EdgeSignature) -> list[dict[str, np.ndarray]]:
    """One signature-runner feed per sample (the flatbuffer has batch 1), in the signature's dtypes and layouts."""
    dtypes = _signature_dtypes(fp32)
    arrays = {
        name: to_layout(as_signature_dtype(samples.inputs[name], dtypes[name], name), layout)
        for name, layout in zip(signature.inputs, signature.input_layouts)
    }
    return [{key: a[i : i + 1] for key, a in arrays.items()} for i in range(len(samples))]


def calibrate(fp32: bytes, manager: Any, ctx: Context, signature: EdgeSignature) -> tuple[dict[str, Any], int]:
    """Activation ranges from ctx.calibration, one sample per invoke (the flatbuffer has batch 1)."""
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    if ctx.calibration is None or len(ctx.calibration) == 0:
        raise UsageError("targets.tflite: int8 needs calibration data: set data.calibration")
    samples = ctx.calibration.take(ctx.config.quantize.samples)
    feeds = signature_feeds(fp32, samples, signature)
    # 'minmax' means the global range; the quantizer's default is a moving average that clips the extremes
    options = ctx.remedy.options if ctx.remedy is not None else {}
    ranges = ranges_for(ctx.config.quantize.calibration, options)
    update = qsv_utils.min_max_update if ranges == "min_max" else qsv_utils.moving_average_update
    calib = calibrator.Calibrator(fp32, num_threads=1, qsv_update_func=update)
    calib.calibrate({SIGNATURE: feeds}, manager)
    return calib.get_model_qsvs(), len(samples)


def widen_constant_ranges(ranges: dict[str, Any]) -> list[str]:
    """Give every tensor that held one value on all calibration samples (a dead ReLU's output: min = max = 0) a
    range that includes 0 and is not empty; returns their names. ai-edge-quantizer 0.10 makes such a range scale 0,
    which quantizes to NaN: the MobileNetV3-style digits model's int8 answered at chance and XNNPACK refused it."""
    constant = []
    for name, qsv in ranges.items():
        if "min" not in qsv or "max" not in qsv:
            continue
        low, high = np.asarray(qsv["min"], np.float32), np.asarray(qsv["max"], np.float32)
        empty = high <= low
        if not empty.any():
            continue
        low, high = np.where(empty, np.minimum(low, 0), low), np.where(empty, np.maximum(high, 0), high)
        high = np.where(high <= low, low + 1.0, high)
        qsv["min"], qsv["max"] = low.astype(np.float32), high.astype(np.float32)
        constant.append(name)
    return constant


def quantize_flatbuffer(
    fp32: bytes, precision: str, ctx: Context, io_dtype: str, signature: EdgeSignature
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
    with quiet_fds() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the calibrator's "preserve_all_tensors is for debugging" notice
        try:
            ranges = None
            if q.need_calibration:
                ranges, details["calibration_samples"] = calibrate(fp32, manager, ctx, signature)
                constant = widen_constant_ranges(ranges)
                if constant:
                    details["constant_tensors"] = sorted(constant)
            result = q.quantize(ranges, enable_progress_report=False)
        except UsageError:
            raise
        except Exception as exc:
            raise library_failure(f"ai-edge-quantizer failed for {precision}", exc, log) from exc
    if notes:
        details["notes"] = notes
    return bytes(result.quantized_model), details
