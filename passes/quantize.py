"""quantize.int8 (static QDQ), quantize.dynamic, quantize.fp16 — ONNX-level quantization through
onnxruntime.quantization, realising the build's one quantization spec (config key `quantize`)."""

from __future__ import annotations

import contextlib
import io
from contextlib import redirect_stdout
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field

from deployc.compiler.contracts import Context, Pass, PassResult
from deployc.core.config import QuantizeSpec
from deployc.core.ort import CalibrationReader
from deployc.core.state import ModelState
from deployc.data.dataset import Dataset
from deployc.errors import UsageError
from deployc.passes.activations import run_key
from deployc.passes.bias_correction import BiasCorrection, correct_biases
from deployc.passes.calibration import (
    METHODS,
    calibration_cache,
    changed_tensors,
    computed_otherwise,
    histograms_ahead,
    mismatched_concats,
    ranges_graph,
)
from deployc.passes.cpu_int8 import profile
from deployc.passes.fp16 import finite_fp16
from deployc.passes.onnx_numerics import sample_feeds
from deployc.passes.onnx_util import op_counts, scratch_dir
from deployc.passes.openvino_qdq import shared_ranges
from deployc.passes.opset import QDQ_PER_CHANNEL_OPSET, OpsetUpgrade, onnx_opset, upgrade_for_qdq
from deployc.passes.qdq_prep import quantizer_ready
from deployc.passes.quantize_memo import memoized_weights
from deployc.passes.recurrent_calibration import calibrated
from deployc.passes.recurrent_int8 import Unrolled, unroll_recurrent
from deployc.passes.smoothquant import MUL_SUFFIX as SMOOTH_MUL_SUFFIX
from deployc.passes.smoothquant import Smoothing, smooth
from deployc.passes.transformer_int8 import Int8Selection, transformer_selection
from deployc.storage.files import write_bytes_atomic


def _machine_reduce_range() -> bool:
    """7-bit weights on an x86 CPU without VNNI: the artifact is validated with onnxruntime on this machine."""
    return profile("auto").reduce_range


class Int8Config(QuantizeSpec):
    model_config = ConfigDict(extra="forbid", frozen=True)
    activation_type: str = Field(
        "uint8",
        pattern="^(uint8|int8)$",
        description="uint8 (asymmetric, U8S8 kernels on x86) or int8; int8 when symmetric_activations",
    )
    calibration_batch: int = Field(16, gt=0, description="samples per calibration forward pass")
    # the default is resolved when the config is made, so the pass cache key and the pass record hold the value used
    reduce_range: bool = Field(
        default_factory=_machine_reduce_range,
        description="7-bit weights, for x86 CPUs without VNNI (their u8s8 kernels saturate on full 8-bit weights); "
        "default: what the CPU of the build machine needs; the onnx target sets it for the CPU it tunes for",
    )
    shared_concat_ranges: bool = Field(
        False,
        description="one calibration range for all inputs and the output of each quantized Concat (and the Split, "
        "MaxPool, Resize between them), so OpenVINO runs it in int8 (passes/openvino_qdq.py); the onnx target sets "
        "it with int8_placement: openvino",
    )


class DynamicConfig(QuantizeSpec):
    model_config = ConfigDict(extra="forbid", frozen=True)
    op_types: list[str] = Field(
        default_factory=lambda: ["MatMul", "Gemm", "Attention", "LSTM"],
        description="ops given int8 weights; Conv is left out: ORT's CPU ConvInteger is slower "
        "than float Conv; GRU has no dynamic int8 kernel in ORT and stays fp32",
    )
    reduce_range: bool = Field(
        default_factory=_machine_reduce_range,
        description="7-bit weights (x86 without VNNI, as for static int8); default: what this machine's CPU needs",
    )


_PREPARED: dict[str, bytes] = {}  # graph digest -> its pre-processed bytes: a remedy trial reuses the first's
_PREPARED_KEPT = 4


def _graph_digest(proto: Any) -> str:
    import hashlib

    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def prepared_if_done(proto: Any) -> Any | None:
    """The pre-processed graph of `proto` when _prepared made it already (the memo, keyed by the graph's bytes),
    else None: the graph calibration measured for it."""
    import onnx

    done = _PREPARED.get(_graph_digest(proto))
    return None if done is None else onnx.load_from_string(done)


def _prepared(proto: Any, work: Any) -> str:
    """Write the model and run onnxruntime's quant_pre_process (shape inference + graph fusions); the result is
    memoized per graph (the last few), as every remedy trial of an artifact prepares the same graph."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    raw, prep = work / "model.onnx", work / "prep.onnx"
    key = _graph_digest(proto)
    if key in _PREPARED:
        write_bytes_atomic(prep, _PREPARED[key])
        return str(prep)
    onnx.save(proto, raw)
    # symbolic shape inference saves 'sym_shape_infer_temp.onnx' (+ .data files) into the CWD when it gives up
    with contextlib.chdir(work):
        try:
            quant_pre_process(str(raw), str(prep), skip_symbolic_shape=False)
        except Exception:
            quant_pre_process(str(raw), str(prep), skip_symbolic_shape=True)  # symbolic inference fails on some ops
    onnx.save(quantizer_ready(onnx.load(str(prep))), prep)
    while len(_PREPARED) >= _PREPARED_KEPT:
        _PREPARED.pop(next(iter(_PREPARED)))
    _PREPARED[key] = prep.read_bytes()
    return str(prep)


def _per_channel(proto: Any, wanted: bool) -> bool:
    return wanted and onnx_opset(proto) >= QDQ_PER_CHANNEL_OPSET  # per-channel DequantizeLinear needs opset 13


def quantize_int8(
    proto: Any, data: Dataset, spec: Int8Config, only: list[str] | None = None, root: Any | None = None
) -> Any:
    """Static QDQ int8 of `proto`, calibrated on `data`; `only` restricts it to these node names; `root`: the
    float graph `proto` was rewritten from, whose ranges are shared (passes/calibration.py)."""
    return quantize_int8_selected(proto, data, spec, only, root).proto


@dataclass(frozen=True)
class Int8Result:
    proto: Any
    selection: Int8Selection | None  # what a transformer-style graph kept in float (None: the quantizer's defaults)
    smoothing: Smoothing | None
    concats_kept: dict[str, str]  # Concat nodes left float: their inputs' ranges differ too much for one scale
    bias_correction: BiasCorrection | None = None  # None: quantize.bias_correction off
    recurrent: Unrolled | None = None  # LSTM/GRU unrolled into int8 gate MatMuls (None: the graph has none)


def _default_op_types() -> set[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QDQRegistry) | set(QLinearOpsRegistry)


def quantize_int8_selected(
    proto: Any,
    data: Dataset,
    spec: Int8Config,
    only: list[str] | None = None,
    root: Any | None = None,
    ahead: bool = False,
) -> Int8Result:
    """quantize_int8 with what it decided: the smoothing applied (spec.smoothing) and, for a graph with attention,
    the transformer op selection (passes/transformer_int8.py). `ahead`: a minmax calibration collects histograms
    too, for the remedy loop's methods (calibration.histograms_ahead)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if len(data) == 0:
        raise UsageError("quantize.int8: the calibration set is empty")
    samples = data.take(spec.samples)
    plain, (proto, smoothing) = proto, smoothed(proto, samples, spec)
    act = QuantType.QInt8 if spec.symmetric_activations or spec.activation_type == "int8" else QuantType.QUInt8
    extra = {
        "ActivationSymmetric": spec.symmetric_activations,
        "WeightSymmetric": True,
        "CalibPercentile": spec.percentile,
    }
    with scratch_dir() as work:
        src, unrolled = _calibrated(proto, work, spec, samples)
        prepared = unrolled.proto
        selection, nodes, keep, options = _selected(prepared, only, not spec.symmetric_activations)
        if unrolled.rewritten:  # gate MatMuls int8, gate math float: MatMul outputs stay float (MatMulIntegerToFloat)
            keep += [*unrolled.elementwise, *unrolled.float_projections]
            outputs_float = options.get("OpTypesToExcludeOutputQuantization", [])
            options = {**options, "OpTypesToExcludeOutputQuantization": sorted({*outputs_float, "MatMul"})}
        out = work / "int8.onnx"
        with redirect_stdout(io.StringIO()):  # entropy/percentile calibrators print progress; keep stdout for --json
            # any batch: the ranges come from deployc's passes (onnxruntime's calibrators, which stack equal batches,
            # never run: quantize_static reads the cache); bias correction's sums then use trial 1's batching
            batch = spec.calibration_batch
            # ranges shared with tensorrt.int8 and every remedy trial; entropy over 2048 bins (calibration.py)
            base, changed = root or proto, None
            if smoothing is not None and root is not None:
                # smoothed: the unsmoothed trial's ranges up to the tensors smoothing changed, those measured on it
                (work / "plain").mkdir()
                unsmoothed = _calibrated(plain, work / "plain", spec, samples)[1].proto
                changed = frozenset(changed_tensors(unsmoothed, prepared, smoothing.changed))
                base = ranges_graph(root, unsmoothed)
                ran, rewrote = base, frozenset(smoothing.changed)
            else:
                ran, rewrote = ranges_graph(base, prepared), frozenset()
            # bias correction's sums of what `prepared` computes as the graph calibration ran: from that run's kept
            # values (calibration._histogram_pass), with no float run of its own
            same_as = (ran, computed_otherwise(ran, prepared, rewrote))
            cache = calibration_cache(
                base, prepared, samples, spec.calibration, batch, spec.percentile, work, changed, ahead
            )
            concats = mismatched_concats(prepared, cache, spec.channel_range_ratio)
            if spec.shared_concat_ranges:
                shared_ranges(prepared.graph, cache, set(concats))
            with memoized_weights():  # remedy trials quantize the same weights (passes/quantize_memo.py)
                quantize_static(
                    src,
                    str(out),
                    CalibrationReader(samples, batch),
                    quant_format=QuantFormat.QDQ,
                    per_channel=_per_channel(proto, spec.per_channel),
                    activation_type=act,
                    weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, METHODS[spec.calibration]),
                    nodes_to_exclude=[*spec.exclude, *keep, *concats],
                    nodes_to_quantize=nodes,
                    reduce_range=spec.reduce_range,
                    extra_options={**extra, **options},
                    calibration_cache_path=cache,
                )
        quantized, correction = onnx.load(str(out)), None
        if spec.bias_correction:
            quantized, correction = correct_biases(quantized, prepared, samples, batch, same_as)
        recurrent = unrolled if unrolled.rewritten or unrolled.kept else None
        return Int8Result(quantized, selection, smoothing, concats, correction, recurrent)


def _calibrated(proto: Any, work: Any, spec: Int8Config, samples: Dataset) -> tuple[str, Unrolled]:
    """The graph quantize_static is given for `proto` (its path in `work`): pre-processed, recurrent ops rewritten
    (their Scan bodies' state ranges measured on `samples`)."""
    import onnx

    src = _prepared(proto, work)
    signed = spec.symmetric_activations or spec.activation_type == "int8"  # the activation type quantize_static gets
    # after the pre-processing: its Identity elimination would merge the recurrent MatMuls' own copies of H
    unrolled = unroll_recurrent(onnx.load(src), spec.recurrent, signed=signed)
    unrolled = calibrated(unrolled, samples, spec.calibration_batch, signed)
    if unrolled.rewritten:
        onnx.save(unrolled.proto, src)
    return src, unrolled


_SMOOTHED: dict[str, tuple[Any, Smoothing]] = {}  # graph + samples + alpha -> smoothed graph (the last two)


def smoothed(proto: Any, samples: Dataset, spec: QuantizeSpec) -> tuple[Any, Smoothing | None]:
    """The fp32 graph smoothed with spec.smoothing (passes/smoothquant.py), or as it is when that is None; memoized:
    the remedy trials after a smoothing trial (fallback) smooth the same graph on the same samples."""
    if spec.smoothing is None:
        return proto, None
    key = run_key(proto, samples, repr(spec.smoothing))
    if key not in _SMOOTHED:
        while len(_SMOOTHED) >= 2:
            _SMOOTHED.pop(next(iter(_SMOOTHED)))
        # its channel maxima: off the calibration of its pre-processed graph when a histogram pass measured it
        rewrites = tuple(g for g in [prepared_if_done(proto)] if g is not None)
        _SMOOTHED[key] = smooth(proto, samples, spec.smoothing, rewrites=rewrites)
    return _SMOOTHED[key]


def _selected(
    prepared: Any, only: list[str] | None, int8_tables: bool
) -> tuple[Int8Selection | None, list[str], list[str], dict[str, Any]]:
    """(the transformer selection or None, nodes to quantize (empty: all), nodes kept float, extra_options)."""
    keep = [n.name for n in prepared.graph.node if n.name.endswith(SMOOTH_MUL_SUFFIX)]  # smoothing must stay float
    selection = transformer_selection(prepared, _default_op_types(), int8_tables)
    if selection is None:
        return None, list(only or []), keep, {}
    nodes = list(only) if only else list(selection.quantize)  # nodes asked for by name (quantize.tune) stand
    return selection, nodes, keep, {"OpTypesToExcludeOutputQuantization": list(selection.inputs_only)}


def int8_decisions(result: Int8Result, where: str, ctx: Context) -> dict[str, Any]:
    """Pass metrics for what quantize_int8_selected decided, each decision logged once."""
    metrics: dict[str, Any] = {}
    if result.selection is not None:
        ctx.instruments.log(f"{where}: {result.selection.describe()}")
        metrics["int8_selection"] = result.selection.to_json()
    if result.smoothing is not None:
        metrics["smoothing"] = result.smoothing.to_json()
    if result.bias_correction is not None:
        metrics["bias_correction"] = result.bias_correction.to_json()
    if result.recurrent is not None:
        metrics["recurrent"] = result.recurrent.to_json()
        for node, why in {**result.recurrent.kept, **result.recurrent.float_projections}.items():
            ctx.instruments.log(f"{where}: '{node}' stays float: {why}")
    for node, why in result.concats_kept.items():
        ctx.instruments.log(f"{where}: '{node}' stays float: {why}")
    if result.concats_kept:
        metrics["concats_kept_float"] = result.concats_kept
    return metrics


def quantize_dynamic_int8(proto: Any, spec: DynamicConfig) -> Any:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with scratch_dir() as work:
        src = _prepared(proto, work)
        out = work / "dynamic.onnx"
        quantize_dynamic(
            src,
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=_per_channel(proto, spec.per_channel),
            reduce_range=spec.reduce_range,
            nodes_to_exclude=list(spec.exclude),
            op_types_to_quantize=list(spec.op_types),
        )
        return onnx.load(str(out))


def _excluded_missing(proto: Any, exclude: list[str]) -> list[str]:
    names = {n.name for n in proto.graph.node}
    return [e for e in exclude if e not in names]


class QuantizePass(Pass):
    """Base of the quantize.* passes: checks `exclude` names and records the precision it produced."""

    requires = frozenset({"onnx"})
    produces = frozenset({"quantized"})
    reads = frozenset({"data.calibration", "data.validation"})  # samples the opset upgrade / fp16 are checked on
    cacheable = True
    precision: str

    def check_exclude(self, proto: Any) -> None:
        missing = _excluded_missing(proto, list(getattr(self.config, "exclude", [])))
        if missing:
            raise UsageError(f"quantize.exclude: no node named {missing} in the graph")

    def upgraded(self, state: ModelState, ctx: Context) -> OpsetUpgrade:
        """The input graph at the opset Q/DQ needs (see passes/opset.py); logs why when per-channel is off."""
        up = upgrade_for_qdq(state.onnx, sample_feeds(state.onnx, ctx.calibration or ctx.validation))
        if up.per_channel_blocked and getattr(self.config, "per_channel", False):
            ctx.instruments.log(f"warning: {self.name}: {up.per_channel_blocked}")
        return up

    def done(self, state: ModelState, proto: Any, metrics: dict[str, Any] | None = None) -> PassResult:
        counts = op_counts(proto)
        facts = state.facts | {f"precision:{self.precision}"}
        metrics = {"ops": counts, "nodes": sum(counts.values()), **(metrics or {})}
        return PassResult(state.replace(onnx=proto, facts=facts), True, metrics)


class QuantizeInt8(QuantizePass):
    name = "quantize.int8"
    Config = Int8Config
    requires = frozenset({"onnx", "data.calibration"})
    precision = "int8"

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        self.check_exclude(state.onnx)
        up = self.upgraded(state, ctx)
        ahead = histograms_ahead(ctx.config.quantize)  # the build's remedy loop, not this pass's config
        result = quantize_int8_selected(up.proto, ctx.calibration, self.config, root=state.onnx, ahead=ahead)
        return self.done(state, result.proto, {**up.metrics(), **int8_decisions(result, self.name, ctx)})


class QuantizeDynamic(QuantizePass):
    name = "quantize.dynamic"
    Config = DynamicConfig
    precision = "dynamic"

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        self.check_exclude(state.onnx)
        up = self.upgraded(state, ctx)
        return self.done(state, quantize_dynamic_int8(up.proto, self.config), up.metrics())


class QuantizeFp16(QuantizePass):
    name = "quantize.fp16"
    Config = QuantizeSpec
    precision = "fp16"

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        result = finite_fp16(state.onnx, sample_feeds(state.onnx, ctx.calibration or ctx.validation))
        if result.kept:
            listed = ", ".join(f"'{n}' ({why})" for n, why in result.kept.items())
            ctx.instruments.log(f"{self.name}: {len(result.kept)} node(s) kept in float32: {listed}")
        if result.finite is False:
            ctx.instruments.log(f"warning: {self.name}: outputs are still non-finite in fp16 on sample inputs")
        return self.done(state, result.proto, {"fp32_nodes": result.kept, "finite_on_samples": result.finite})
