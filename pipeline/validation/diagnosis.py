"""One line that says where a failed build lost it, for the top of the reports: the stage at fault, not the last
artifact that noticed."""

from __future__ import annotations

from deployc.compiler.contracts import Artifact
from deployc.core.config import ValidateConfig
from deployc.validation.remedies import needs_remedy


def _drift(art: Artifact) -> str:
    drift = art.metrics.get("drift")
    return f"drift {drift:+.4g}" if isinstance(drift, (int, float)) else "failed"


def diagnose(artifacts: list[Artifact], upstream: str | None, rules: ValidateConfig) -> str | None:
    """None for a build whose gates all pass; else where the loss comes from, first match wins: a torch-level pass
    (`upstream`), lowering (an fp32 artifact fails), quantization (only quantized artifacts fail), an artifact that
    could not be built or run, or another gate (coverage)."""
    failed = [a for a in artifacts if a.gate.get("status") in ("fail", "error")]
    if not artifacts:
        return "no artifact was built"
    if not failed:
        if any(a.gate.get("status") == "pass" for a in artifacts):
            return None
        return f"no artifact could run its gate here: {artifacts[0].label}: {artifacts[0].gate.get('reason', '')}"
    if upstream:
        return f"accuracy lost before export and quantization: {upstream}; every artifact inherits it"
    drifted = [a for a in failed if needs_remedy(a, rules)]
    fp32 = [a for a in drifted if a.kind == "fp32"]
    if fp32:
        shown = ", ".join(f"{a.label} ({_drift(a)})" for a in fp32)
        return (
            f"accuracy lost in lowering, before quantization: {shown} already fails against the model as loaded "
            f"(export or conversion changes what the model computes)"
        )
    if drifted:
        shown = ", ".join(f"{a.label} ({_drift(a)})" for a in drifted)
        return (
            f"accuracy lost in quantization: {shown} past the budget {rules.max_drift:g} while the fp32 artifacts "
            f"pass; `deployc explain` shows the layers that lose it"
        )
    first = failed[0]
    verb = "could not be built or run" if first.gate.get("status") == "error" else "fails its gate"
    return f"{first.label} {verb}: {first.gate.get('reason', '')}"
