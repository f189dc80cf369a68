"""Build-level gates besides accuracy: an int8/dynamic artifact that is not faster than fp32 on its runtime."""

from __future__ import annotations

from typing import Any


def latency_warning(label: str, int8_ms: float | None, fp32_ms: float | None, runtime: str) -> str | None:
    """A warning when an int8 artifact is not faster than the fp32 one on the same runtime."""
    if int8_ms is None or fp32_ms is None or int8_ms < fp32_ms:
        return None
    return (
        f"{label} is not faster than fp32 on {runtime} ({int8_ms:.3f} vs {fp32_ms:.3f} ms/sample, batch 1): "
        f"quantize/dequantize overhead outweighs the int8 kernels at this size; ship fp32, or int8 only for its size"
    )


def latency_gate(artifacts: list[Any], mode: str = "warn") -> list[str]:
    """Compare each int8 artifact's batch-1 latency with its target's fp32 artifact ('warn' | 'fail' | 'off').

    Returns the warnings (with timings) for the log. Only in 'fail' mode does the artifact change (gate and
    details["warnings"]): whether int8 wins by a few microseconds varies run to run, and manifest.json must not.
    """
    if mode == "off":
        return []
    found = []
    fp32 = {(a.target, a.row): a for a in artifacts if a.kind == "fp32" and a.perf}  # each runtime row its own
    for a in artifacts:
        base = fp32.get((a.target, a.row))
        if a.kind not in ("int8", "dynamic") or base is None or not a.perf:
            continue
        if proxy_runtime(a.runtime, a.details):  # a stand-in's timing says nothing of the engine's int8 speed
            continue
        text = latency_warning(a.label, a.perf.get("latency_ms_batch1"), base.perf.get("latency_ms_batch1"), a.runtime)
        if text:
            found.append(text)
            stable = f"{a.label} is not faster than {base.label} on {a.runtime} (batch 1; figures in timings.json)"
            if mode == "fail" and a.gate.get("status") == "pass":  # opted in: the gate then depends on timing
                a.details.setdefault("warnings", []).append(stable)
                a.gate = {"status": "fail", "reason": f"latency gate: {stable}"}
    return found


def more_on_cpu(report: dict[str, Any]) -> str:
    """What an NPU report's capped cpu_fallback list leaves out: '; … 7012 more on the CPU (ADD×900, …)', or ''."""
    fallback = report.get("cpu_fallback") or []
    more = (report.get("cpu_ops") or 0) - len(fallback)
    if more <= 0 or not isinstance(report.get("cpu_op_types"), dict):
        return ""
    types = ", ".join(f"{op}×{n}" for op, n in sorted(report["cpu_op_types"].items(), key=lambda kv: -kv[1]))
    return f"; … {more} more on the CPU (all CPU ops: {types})"


def proxy_runtime(runtime: str | None, details: dict[str, Any]) -> str | None:
    """The stand-in runtime an artifact was validated on (TensorRT without a GPU: onnxruntime), else None."""
    engine = details.get("engine")
    if runtime and "proxy" in runtime and isinstance(engine, str) and engine.startswith("not built"):
        return runtime.split(" (")[0]
    return None
