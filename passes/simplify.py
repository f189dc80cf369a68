"""simplify — onnxsim (shape-driven folding) then onnxscript's optimizer and rewriter
(constant folding, dead code, BN folding and other fusions); the graph's numbers must not change."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from deployc.contracts import Context, Pass, PassResult
from deployc.passes.onnx_util import op_counts
from deployc.state import ModelState


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


class Simplify(Pass):
    name = "simplify"
    Config = SimplifyConfig
    requires = frozenset({"onnx"})
    produces = frozenset({"simplified"})

    cacheable = True

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        before = op_counts(state.onnx)
        proto = simplify_proto(state.onnx, self.config)
        after = op_counts(proto)
        metrics = {"nodes_before": sum(before.values()), "nodes_after": sum(after.values()), "ops": after}
        modified = proto.SerializeToString(deterministic=True) != state.onnx.SerializeToString(deterministic=True)
        return PassResult(state.replace(onnx=proto) if modified else state, modified, metrics)
