"""What the manifest says about a quantized ONNX graph (onnx and tensorrt targets): its int8 coverage, warnings
when an int8/dynamic artifact is mostly float or no smaller than fp32, and the nodes an fp16 graph keeps float32."""

from __future__ import annotations

from typing import Any

from deployc.compiler.contracts import Context
from deployc.core.state import ModelState
from deployc.passes.coverage import Int8Coverage, coverage_details, onnx_int8_coverage
from deployc.passes.onnx_numerics import sample_feeds

DYNAMIC_OPS = "onnxruntime's dynamic int8 quantizes only MatMul/Gemm/LSTM/Attention weights"
WHY_DYNAMIC = {  # op type -> why onnxruntime's dynamic int8 leaves it float
    "Conv": "Conv needs int8 (static): onnxruntime's ConvInteger is slower than float Conv",
    "ConvTranspose": "ConvTranspose needs int8 (static)",
    "GRU": "onnxruntime has no dynamic int8 GRU kernel (int8 static rewrites it into int8 MatMuls)",
    "RNN": "onnxruntime has no dynamic int8 RNN kernel",
}
KEPT = "kept float (quantize.exclude, a remedy's fallback, or a node the quantizer cannot calibrate)"


def _first_reasons(kept: dict[str, str], op_of: dict[str, str]) -> dict[str, str]:
    """Op type -> the first recorded reason one of its nodes stayed float ('' keys: nodes no longer in the graph)."""
    out: dict[str, str] = {}
    for node, why in kept.items():
        out.setdefault(op_of.get(node, ""), f"'{node}': {why}")
    return out


def float_reasons(where: str, coverage: Int8Coverage, records: list[Any], graph: Any) -> str:
    """Which weighted ops stay float in this artifact and why, per op type, from what its passes recorded:
    a target gives its own runtime's reasons (tensorrt's placement rules, onnx's quantizer or dynamic kernels)."""
    op_of = {n.name: n.op_type for n in graph.graph.node}
    metrics: dict[str, Any] = {}
    for r in records:
        metrics.update(r.metrics)
    recurrent = (metrics.get("recurrent") or {}).get("kept", {})
    reasons = {
        op: f"not rewritten into int8 MatMuls ({why})" for op, why in _first_reasons(recurrent, op_of).items() if op
    }
    reasons.update(_first_reasons(metrics.get("kept_high_precision") or {}, op_of))
    parts = []
    for op, count in sorted(coverage.float_ops.items()):
        if where.endswith("/dynamic"):
            why = WHY_DYNAMIC.get(op, KEPT)
        elif op in reasons:
            why = reasons[op]
        elif op == "RNN":
            why = "only LSTM and GRU are rewritten into int8 MatMuls"
        else:
            why = KEPT
        parts.append(f"{op}×{count} stay float ({why})")
    return "; ".join(parts)


class NothingInInt8(Exception):
    """The quantizer made no weighted op int8: the artifact would be the fp32 graph labelled int8."""

    def __init__(self, coverage: Int8Coverage, why: str = ""):
        floats = ", ".join(f"{op}×{n}" for op, n in sorted(coverage.float_ops.items())) or "none in the graph"
        super().__init__(f"no weighted op runs in int8 (weighted ops: {floats})" + (f": {why}" if why else ""))


def int8_coverage_of(precision: str, done: ModelState, ctx: Context) -> Int8Coverage | None:
    """The coverage of an int8/dynamic graph (None for other precisions)."""
    if precision not in ("int8", "dynamic"):
        return None
    return onnx_int8_coverage(done.onnx, sample_feeds(done.onnx, ctx.calibration or ctx.validation, 1).first())


def quantized_details(
    where: str, coverage: Int8Coverage | None, base: ModelState, done: ModelState, ctx: Context
) -> dict[str, Any]:
    """Artifact details for the graph `done` (`where`: 'onnx/int8'...), warnings logged as they are made."""
    fp16 = next((r for r in done.history[len(base.history) :] if r.name == "quantize.fp16"), None)
    if fp16 is not None:
        return {"fp16_kept_fp32": fp16.metrics.get("fp32_nodes", {})}
    if coverage is None:
        return {}
    records = list(done.history[len(base.history) :])
    quantized = next((r for r in records if r.name.startswith("quantize.int8")), None)
    selection = quantized.metrics.get("int8_selection") if quantized is not None else None
    dynamic = where.endswith("/dynamic")
    hint = float_reasons(where, coverage, records, done.onnx)
    details = coverage_details(coverage, where, ctx.instruments.log, hint)
    if selection is not None:  # a transformer graph: the ops int8 would break, kept float on purpose
        details["int8_kept_float"] = selection["kept_float"]
    fp32_bytes, own = base.onnx.ByteSize(), done.onnx.ByteSize()
    if dynamic and own >= fp32_bytes:
        warning = (
            f"{where}: {own} bytes, not smaller than the fp32 graph's {fp32_bytes}: the few weights it makes int8 "
            "do not outweigh the quantize/dequantize nodes it adds"
        )
        ctx.instruments.log(f"warning: {warning}")
        details.setdefault("warnings", []).append(warning)
    return details


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    """Detail dicts combined, their 'warnings' lists joined."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, []) + value if key == "warnings" else value
    return out
