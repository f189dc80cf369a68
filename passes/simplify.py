"""simplify — onnxsim (shape-driven folding) then onnxscript's optimizer and rewriter
(constant folding, dead code, BN folding and other fusions); the graph's numbers must not change."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.contracts import Context, Pass
from pipeline.registry import register_pass
from pipeline.state import ModelState
from passes.onnx_util import op_counts


class SimplifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    onnxsim: bool = Field(True, description="run onnxsim")
    optimizer: bool = Field(True, description="run onnxscript's optimizer (constant folding, dead code)")
    rewrite: bool = Field(True, description="run onnxscript's default rewrite rules (BN folding, fusions)")


def simplify_proto(proto: Any, config: SimplifyConfig = SimplifyConfig()) -> Any:
    import onnx

    if config.onnxsim:
        import onnxsim

        simplified, ok = onnxsim.simplify(proto)
        if ok:  # onnxsim checks its own result numerically; keep the input when that check fails
            proto = simplified
    if config.optimizer:
        from onnxscript import optimizer

        proto = optimizer.optimize(proto)
    if config.rewrite:
        from onnxscript import rewriter

        proto = rewriter.rewrite(proto)
    onnx.checker.check_model(proto)
    return proto


@register_pass
class Simplify(Pass):
    name = "simplify"
    Config = SimplifyConfig
    requires = frozenset({"onnx"})
    produces = frozenset({"simplified"})

    cacheable = True

    def run(self, state: ModelState, ctx: Context) -> tuple[ModelState, bool, dict[str, Any]]:
        before = op_counts(state.onnx)
        proto = simplify_proto(state.onnx, self.config)
        after = op_counts(proto)
        metrics = {"nodes_before": sum(before.values()), "nodes_after": sum(after.values()), "ops": after}
        return state.replace(onnx=proto), before != after, metrics
