"""The accuracy remedies the tflite target realises with ai-edge-quantizer 0.10's recipes: the range estimator
(global min/max or moving average), the weight algorithm (min/max, MSE, OCTAV), per-channel/per-tensor weights,
and float fallback of the ops that add most error (ranked by ai-edge-quantizer's own per-tensor comparison)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from deployc.compiler.contracts import Remedy
from deployc.passes.sensitivity import damage
from deployc.validation.remedies import fallback_remedy, fallback_steps, spec_remedies

RANGES = ("min_max", "moving_average")  # calibration: the quantizer's two range estimators (qsv_utils)
WEIGHT_ALGORITHMS = ("min_max", "mse", "octav")  # AlgorithmName.MIN_MAX_UNIFORM_QUANT / MSE / OCTAV
STAGES = ("calibration", "granularity", "smoothing", "fallback")  # int8 activations are asymmetric in LiteRT


def ranges_for(calibration: str, options: dict[str, Any]) -> str:
    """The range estimator a trial uses: its own option, else the spec's (minmax: global; others: moving average)."""
    return options.get("ranges") or ("min_max" if calibration == "minmax" else "moving_average")


def calibration_remedies(base: Remedy) -> list[Remedy]:
    """The other range estimator, then the MSE and OCTAV weight algorithms (on the weighted ops)."""
    current = ranges_for(base.spec.calibration, base.options)
    weights = base.options.get("weights", "min_max")
    out = [
        Remedy("calibration", f"{r.replace('_', ' ')} activation ranges", base.spec, {**base.options, "ranges": r})
        for r in RANGES
        if r != current
    ]
    out += [
        Remedy("calibration", f"{w.upper()} weights", base.spec, {**base.options, "weights": w}, base.fallback)
        for w in WEIGHT_ALGORITHMS
        if w not in (weights, "min_max")
    ]
    return out


MODULE_SUFFIX = ";*"  # a fallback entry naming every op of one torch module, not one tensor
BIG_MODULE = 16  # a module writing more tensors than this (litert unrolls an LSTM: ~7,700 ops) falls back whole


def float_scope(tensor: str) -> str:
    """The recipe regex of the op writing `tensor` (ai-edge-quantizer's op scope: 'out1;out2;'), or of every op
    of a module for an entry '<module>;*' (litert names a module's tensors '<module path>;<n>')."""
    if tensor.endswith(MODULE_SUFFIX):
        return f"(^|;){re.escape(tensor.removesuffix(MODULE_SUFFIX))};[0-9]*;"
    return f"(^|;){re.escape(tensor)};"


def _module(tensor: str) -> str | None:
    """The torch module path of a litert tensor name '<module path>;<n>' (None for fused or plain names)."""
    scope, sep, n = tensor.rpartition(";")
    return scope if sep and (n.isdigit() or not n) and ";" not in scope else None


def by_module(units: list[list[str]], tensors: list[str]) -> list[list[str]]:
    """Fallback units with each tensor of a big module (an unrolled recurrent layer) replaced by that whole
    module: growing the kept set tensor by tensor would never reach thousands of ops within the trial budget."""
    sizes: dict[str, int] = {}
    for t in tensors:
        if (m := _module(t)) is not None:
            sizes[m] = sizes.get(m, 0) + 1
    out = []
    for unit in units:
        named = [(m + MODULE_SUFFIX) if (m := _module(t)) and sizes.get(m, 0) > BIG_MODULE else t for t in unit]
        out.append(list(dict.fromkeys(named)))
    return out


def _channel_nmse(target: np.ndarray, reference: np.ndarray) -> float:
    """Squared error over squared reference per channel (the last axis: TFLite is NHWC), averaged over the live
    channels: a crushed small channel is not hidden by a big one."""
    ref = np.asarray(reference, np.float64)
    got = np.asarray(target, np.float64).reshape(ref.shape)
    ref, got = ref.reshape(-1, ref.shape[-1] if ref.ndim else 1), got.reshape(-1, ref.shape[-1] if ref.ndim else 1)
    power, err = (ref**2).sum(axis=0), ((ref - got) ** 2).sum(axis=0)
    live = power > 1e-12 * max(float(power.max()), 1e-30)
    return float(np.mean(err[live] / power[live])) if live.any() else float(err.sum() > 0)


def op_errors(
    fp32: bytes, int8: bytes, feeds: list[dict[str, np.ndarray]], signature: str
) -> list[tuple[list[str], float]]:
    """(output tensors of an op and of the ops reading it, the damage it does) for each op of the int8 model, worst first (see damage()), from the
    per-channel normalised squared error of its output and of its inputs, from ai-edge-quantizer's per-tensor comparison of one fp32 and
    one int8 run (model_validator.compare_model, what Quantizer.validate calls)."""
    from ai_edge_litert.tools import flatbuffer_utils as fb
    from ai_edge_quantizer import model_validator
    from ai_edge_quantizer.utils import validation_utils

    result = model_validator.compare_model(
        fp32,
        int8,
        {signature: feeds},
        [validation_utils.ValidationErrorMetric.MSE],  # the name it files results under; the value is _channel_nmse
        compare_fns=[_channel_nmse],
        num_threads=1,
    )
    errors = {name: v["mse"] for name, v in result.get_all_tensor_results().items()}
    model = fb.convert_bytearray_to_object(bytearray(fp32))
    ranked = []
    for sg in model.subgraphs:
        names = [t.name.decode() if isinstance(t.name, bytes) else str(t.name) for t in sg.tensors]
        writes = [[names[i] for i in op.outputs if i >= 0] for op in sg.operators]
        for op, outs in zip(sg.operators, writes):
            measured = [o for o in outs if o in errors]
            if not measured:
                continue
            before = max((errors.get(names[i], 0.0) for i in op.inputs if i >= 0), default=0.0)
            score = damage(max(errors[o] for o in measured), before)
            # the tensor is quantized for its writer and for each reader: both stay float to keep it float
            readers = [w[0] for o2, w in zip(sg.operators, writes) if w and set(o2.inputs) & set(op.outputs)]
            if score > 0:
                ranked.append(([measured[0], *readers], score))
    return sorted(ranked, key=lambda r: (-r[1], r[0]))


def tensor_names(model: bytes) -> list[str]:
    from ai_edge_litert.tools import flatbuffer_utils as fb

    graph = fb.convert_bytearray_to_object(bytearray(model))
    return [t.name.decode() if isinstance(t.name, bytes) else str(t.name) for sg in graph.subgraphs for t in sg.tensors]


def tflite_remedies(
    stage: str, base: Remedy, fp32: bytes, int8: bytes, feeds: list[dict[str, np.ndarray]], signature: str, spec: Any
) -> list[Remedy]:
    """The candidates of one stage, from `base` (whose artifact is `int8`)."""
    if stage == "calibration":
        return calibration_remedies(base)
    if stage != "fallback":
        return spec_remedies(stage, base, [], spec.smoothing_alpha)
    prior = list(base.options.get("float_tensors", []))
    groups = by_module([group for group, _ in op_errors(fp32, int8, feeds, signature)], tensor_names(fp32))
    units = [[n for n in group if n not in prior] for group in groups]
    units = list({tuple(u): u for u in units if u}.values())  # a big module's units are all the same one
    return [
        fallback_remedy(base, layers, "float", float_tensors=prior + layers)
        for layers in fallback_steps(units, spec.max_fallback)
    ]
