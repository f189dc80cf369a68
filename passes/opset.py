"""The opset a graph needs before Q/DQ passes: per-channel DequantizeLinear (its `axis`) needs opset ≥ 13, and
graphs from older converters (paddle2onnx, old torch) are often opset 11-12. onnx's version converter upgrades
them; where it fails, or its result does not load or does not compute the same numbers, quantization keeps
per-tensor weights and says why (what Intel Neural Compressor does; Model Optimizer upgrades and carries on)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deployc.core.memory import MemoryBudgetExceeded
from deployc.core.ort import session
from deployc.passes.onnx_numerics import Feeds, batched_outputs, batches_mismatch, pinned

QDQ_PER_CHANNEL_OPSET = 13


def onnx_opset(proto: Any) -> int:
    """The graph's default-domain (ai.onnx) opset."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


@dataclass(frozen=True)
class OpsetUpgrade:
    proto: Any  # the graph to quantize: upgraded, or the input when no upgrade was needed or possible
    from_opset: int
    to_opset: int
    per_channel_blocked: str | None = None  # why per-channel weights cannot be used on `proto`

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"opset": {"from": self.from_opset, "to": self.to_opset}}
        if self.per_channel_blocked:
            out["per_channel_blocked"] = self.per_channel_blocked
        return out


def upgrade_for_qdq(proto: Any, feeds: Feeds | None) -> OpsetUpgrade:
    """`proto` at opset ≥ 13 when onnx's version converter gets it there with the same outputs on `feeds`."""
    import onnx
    from onnx import version_converter

    opset = onnx_opset(proto)
    if opset >= QDQ_PER_CHANNEL_OPSET:
        return OpsetUpgrade(proto, opset, opset)
    try:
        feeds = pinned(feeds, proto, None, "the opset upgrade's output check") if feeds else None
        reference = list(batched_outputs(proto, feeds)) if feeds else None
    except MemoryBudgetExceeded:
        raise
    except Exception:  # samples the graph does not take: the upgrade is still checked and loaded
        reference = None
    try:
        upgraded = version_converter.convert_version(proto, QDQ_PER_CHANNEL_OPSET)
        onnx.checker.check_model(upgraded)
        if reference is None:
            session(upgraded, threads=1, optimize=False)
            why = None
        else:
            why = batches_mismatch(reference, batched_outputs(upgraded, feeds))
    except MemoryBudgetExceeded:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        why = f"{type(exc).__name__}: {text}"
    if why:
        reason = (
            f"onnx's version converter could not upgrade opset {opset} to {QDQ_PER_CHANNEL_OPSET} ({why}); "
            f"per-channel weights need opset {QDQ_PER_CHANNEL_OPSET}, so weights are quantized per-tensor"
        )
        return OpsetUpgrade(proto, opset, opset, reason)
    return OpsetUpgrade(upgraded, opset, QDQ_PER_CHANNEL_OPSET)
