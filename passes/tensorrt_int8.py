"""Pass `tensorrt.int8`, run by the tensorrt target: symmetric int8 Q/DQ where TensorRT's placement rules put them
(passes/tensorrt_qdq.py), and everything else in fp16 or fp32.

TensorRT's networks are strongly typed (always in TensorRT 11, where the FP16/INT8 builder flags are gone): every
tensor runs in the type the graph gives it, so an int8 graph whose unquantized part is float32 runs that part in
float32 on the GPU. With high_precision 'fp16' (Model Optimizer's default, high_precision_dtype=fp16) the graph is
raised to opset 19, where QuantizeLinear/DequantizeLinear take fp16 scales, and the unquantized ops are converted
to fp16; the ones whose values fp16 cannot hold on the samples stay float32 (passes/fp16.py). fp16 is the default
because TensorRT's placement guide recommends it for latency and it cost little on the onnxruntime proxy
(benchmarks/tensorrt_placement.py: within one sample of fp32 on paddleocr-cls and crepe-tiny, 0.02 of YOLOv8n's
detection F1); 'fp32' is there for a budget fp16 does not meet.
"""

from __future__ import annotations

import collections
from typing import Any, Literal

from pydantic import Field

from deployc.compiler.contracts import Context, Pass, PassResult
from deployc.core.config import QuantizeSpec
from deployc.core.memory import MemoryBudgetExceeded
from deployc.core.state import ModelState
from deployc.errors import UsageError
from deployc.passes.bias_correction import correct_biases
from deployc.passes.calibration import computed_otherwise, histograms_ahead, ranges_graph
from deployc.passes.fp16 import finite_fp16
from deployc.passes.onnx_numerics import Feeds, batched_outputs, batches_mismatch, pinned, sample_feeds
from deployc.passes.onnx_util import op_counts, producers
from deployc.passes.opset import onnx_opset, upgrade_for_qdq
from deployc.passes.qdq_prep import quantizer_ready
from deployc.passes.quantize import smoothed
from deployc.passes.recurrent_calibration import calibrated
from deployc.passes.recurrent_int8 import unroll_recurrent
from deployc.passes.tensorrt_qdq import named, place, quantize_placed

FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear with fp16 scales (and fp16 in/out) need opset 19
HighPrecision = Literal["fp16", "fp32"]
NOT_COMPUTE = {"QuantizeLinear", "DequantizeLinear", "Cast", "Constant"}
# g2p's tensorrt int8 phoneme drift 0.0033 with them in fp16, 0.0029 with the whole rest in fp32 (benchmarks/peers)
RECURRENT_FP32 = "LSTM/GRU gate math and state: fp16 rounding of the state compounds over the time steps"


class TensorrtInt8Config(QuantizeSpec):
    fallback: list[str] = Field(
        default_factory=list, description="nodes left unquantized (run in the high precision), e.g. per-layer remedies"
    )
    high_precision: HighPrecision = Field("fp16", description="what the ops left out of int8 run in")
    calibration_batch: int = Field(16, gt=0, description="samples per calibration forward pass")


def _fp16_opset(proto: Any, feeds: Feeds) -> tuple[Any, str | None]:
    """`proto` at opset ≥ 19, checked to compute the same outputs on `feeds`; else `proto` and why not."""
    import onnx
    from onnx import version_converter

    if onnx_opset(proto) >= FP16_QDQ_OPSET:
        return proto, None
    try:
        upgraded = version_converter.convert_version(proto, FP16_QDQ_OPSET)
        onnx.checker.check_model(upgraded)
        feeds = pinned(feeds, proto, None, "the opset upgrade's output check")
        why = batches_mismatch(list(batched_outputs(proto, feeds)), batched_outputs(upgraded, feeds))
    except MemoryBudgetExceeded:
        raise
    except Exception as exc:
        why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    return (proto, why) if why else (upgraded, None)


def _float_types(proto: Any) -> dict[str, int]:
    """Element type of every float tensor, from ONNX type inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    g = inferred.graph
    types = {i.name: i.data_type for i in g.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)})
    return {k: v for k, v in types.items() if v in (1, 10)}


def precision_of_ops(proto: Any) -> dict[str, dict[str, int]]:
    """Compute ops by the precision the graph gives them: 'int8' (a weighted op all of whose multiplied inputs
    come out of a DequantizeLinear of int8), 'fp16' or 'fp32' (the type of the float values they write); ops
    writing no float (Shape, index arithmetic) are not counted."""
    from onnx import TensorProto

    producer = producers(proto.graph.node)
    types = _float_types(proto)
    out: dict[str, collections.Counter[str]] = {"int8": collections.Counter(), "fp16": collections.Counter()}
    out["fp32"] = collections.Counter()

    def dequantized(t: str) -> bool:
        p = producer.get(t)
        return p is not None and p.op_type == "DequantizeLinear"

    for n in proto.graph.node:
        if n.op_type in NOT_COMPUTE:
            continue
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and all(dequantized(i) for i in n.input[:2]):
            out["int8"][n.op_type] += 1
            continue
        written = [types[t] for t in n.output if t in types]
        if written:
            out["fp16" if written[0] == TensorProto.FLOAT16 else "fp32"][n.op_type] += 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


class TensorrtInt8(Pass):
    name = "tensorrt.int8"
    Config = TensorrtInt8Config
    requires = frozenset({"onnx", "data.calibration"})
    produces = frozenset({"quantized"})
    reads = frozenset({"data.validation"})  # samples the opset upgrade and fp16 are checked on
    cacheable = True
    reads_config = frozenset()  # its spec comes in its own config

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        cfg = self.config
        proto = named(state.onnx)
        names = {n.name for n in proto.graph.node}
        for key, listed in (("quantize.exclude", cfg.exclude), ("targets.tensorrt fallback", cfg.fallback)):
            missing = [n for n in listed if n not in names]
            if missing:
                raise UsageError(f"{key}: no node named {missing} in the graph")
        feeds = sample_feeds(proto, ctx.calibration or ctx.validation)
        up = upgrade_for_qdq(proto, feeds)
        proto, metrics = up.proto, up.metrics()
        fp16 = cfg.high_precision == "fp16"
        if fp16:
            proto, why = _fp16_opset(proto, feeds)
            if why:
                fp16 = False
                metrics["fp16_blocked"] = f"fp16 Q/DQ need opset {FP16_QDQ_OPSET}, the upgrade failed ({why})"
                ctx.instruments.log(f"warning: {self.name}: {metrics['fp16_blocked']}; the rest stays float32")
        proto, smoothing = smoothed(proto, ctx.calibration.take(cfg.samples), cfg)  # quantize.smoothing (SmoothQuant)
        if smoothing is not None:
            metrics["smoothing"] = smoothing.to_json()
        # LSTM/GRU gate MatMuls become weighted ops; Scan bodies get TensorRT's symmetric int8
        unrolled = unroll_recurrent(quantizer_ready(proto), cfg.recurrent, signed=True)
        unrolled = calibrated(unrolled, ctx.calibration.take(cfg.samples), cfg.calibration_batch, signed=True)
        proto = unrolled.proto
        if unrolled.rewritten or unrolled.kept:
            metrics["recurrent"] = unrolled.to_json()
            for node, why in {**unrolled.kept, **unrolled.float_projections}.items():
                ctx.instruments.log(f"{self.name}: '{node}' stays in high precision: {why}")
        placement = place(proto, set(cfg.exclude) | set(cfg.fallback) | set(unrolled.float_projections))
        if not placement.weighted:
            kept = "; ".join(f"'{n}': {why}" for n, why in {**placement.kept, **unrolled.kept}.items())
            kept = kept or "the graph has none"
            raise UsageError(f"{self.name}: no weighted op to run in int8 on TensorRT ({kept})")
        per_channel = cfg.per_channel and not up.per_channel_blocked
        float_graph = proto
        proto, restored = quantize_placed(
            proto,
            placement,
            ctx.calibration,
            cfg.calibration,
            per_channel,
            cfg.samples,
            cfg.calibration_batch,
            cfg.percentile,
            root=state.onnx,
            changed=smoothing.changed if smoothing is not None else None,
            ahead=histograms_ahead(ctx.config.quantize),  # the build's remedy loop, not this pass's config
        )
        if cfg.bias_correction:  # float biases here: the shift is subtracted from them as they are
            # the sums of what the float graph computes as the graph calibration ran: from that run's kept values
            ran = state.onnx if smoothing is not None else ranges_graph(state.onnx, float_graph)
            rewrote = frozenset(smoothing.changed) if smoothing is not None else frozenset()
            same_as = (ran, computed_otherwise(ran, float_graph, rewrote))
            data = ctx.calibration.take(cfg.samples)
            proto, correction = correct_biases(proto, float_graph, data, same_as=same_as)
            metrics["bias_correction"] = correction.to_json()
        fp32_nodes: dict[str, str] = {}
        if fp16:
            half = finite_fp16(proto, feeds, {n: RECURRENT_FP32 for n in unrolled.elementwise})
            proto, fp32_nodes = half.proto, half.kept
        counts = op_counts(proto)
        metrics.update(
            {
                "ops": counts,
                "quantize_linear": counts.get("QuantizeLinear", 0),
                "int8_weighted_ops": len(placement.weighted),
                "residual_adds": len(placement.residual),
                "fused_inputs_restored": restored,
                "kept_high_precision": placement.kept,
                "high_precision": "fp16" if fp16 else "fp32",
                "fp32_nodes": fp32_nodes,
                "precision": precision_of_ops(proto),
            }
        )
        facts = state.facts | {"quantized", "precision:int8"}
        return PassResult(state.replace(onnx=proto, facts=facts), True, metrics)


def int8_details(metrics: dict[str, Any]) -> dict[str, Any]:
    """What an artifact's details say about a tensorrt.int8 network: where its Q/DQ are and what runs in which
    precision (ops TensorRT's Q/DQ propagation may still run in int8, such as MaxPool between Q/DQ, are counted
    by the type the graph gives them)."""
    return {
        "int8_placement": {
            "rules": "TensorRT explicit quantization: inputs of weighted ops, the skip input of residual Adds",
            "quantize_linear": metrics["quantize_linear"],
            "int8_weighted_ops": metrics["int8_weighted_ops"],
            "residual_adds": metrics["residual_adds"],
            "kept_high_precision": metrics["kept_high_precision"],
        },
        "precision": {**metrics["precision"], "rest": metrics["high_precision"], "fp32_nodes": metrics["fp32_nodes"]},
    }
