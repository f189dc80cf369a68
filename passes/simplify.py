"""simplify — onnxsim (shape-driven folding) then onnxscript's optimizer and rewriter (constant folding, dead
code, BN folding and other fusions). The graph's numbers must not change: each stage's result is checked
(onnx checker, then its outputs on sample inputs against the input graph's) and a stage that fails is dropped.

Why the check: onnxscript 0.7's no-op rules match constants within abs_tol 1e-8 of zero, so `Add(x, 1e-10)`
becomes `x` and `Log(Square(x) + 1e-10)` turns into `Log(Square(x))`, -inf on silence (basic-pitch's front end).

Why max_nodes: onnxscript's optimizer and rewriter cost grows faster than the graph (benchmarks/simplify_chain.py,
an Add/Relu chain: 11.8 s CPU at 4 000 nodes, 40.7 s at 8 000, ~n^1.8; 513 s for the pass at 20 000 in issue 23);
on a graph of more than max_nodes those two stages are skipped with the reason logged, onnxsim (C++) still runs
(20 000 nodes: 5.6 s CPU for the pass).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from deployc.compiler.contracts import Context, Pass, PassResult
from deployc.core.memory import MemoryBudgetExceeded
from deployc.core.state import ModelState
from deployc.passes.onnx_numerics import Feeds, batched_outputs, batches_mismatch, pinned, sample_feeds
from deployc.passes.onnx_util import copied, op_counts

MAX_NODES = 10_000


class SimplifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    onnxsim: bool = Field(True, description="run onnxsim")
    optimizer: bool = Field(True, description="run onnxscript's optimizer (constant folding, dead code)")
    rewrite: bool = Field(True, description="run onnxscript's default rewrite rules (BN folding, fusions)")
    samples: int = Field(4, ge=1, le=1024, description="samples each stage's outputs are checked on")
    max_nodes: int = Field(
        MAX_NODES,
        ge=1,
        description="skip the optimizer and rewrite stages on graphs with more nodes (their cost "
        "grows faster than the graph)",
    )


def _onnxsim(proto: Any) -> Any:
    import onnxsim

    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        raise ValueError("onnxsim's own check of its result failed")
    return simplified


def _optimizer(proto: Any) -> Any:
    from onnxscript import optimizer

    return optimizer.optimize(proto)


def _rewrite(proto: Any) -> Any:
    from onnxscript import rewriter

    return rewriter.rewrite(proto)


STAGES: dict[str, Callable[[Any], Any]] = {"onnxsim": _onnxsim, "optimizer": _optimizer, "rewrite": _rewrite}
SUPERLINEAR = frozenset({"optimizer", "rewrite"})  # stages bounded by SimplifyConfig.max_nodes


def simplify_stages(proto: Any, config: SimplifyConfig, feeds: Feeds) -> tuple[Any, dict[str, str]]:
    """The simplified graph and what happened to each enabled stage: 'kept', or 'dropped: <why>' when it crashed,
    failed the checker or changed the outputs on `feeds` (the same batches for every stage)."""
    import onnx

    try:
        feeds = pinned(feeds, proto, None, "simplify's output check")
        reference = list(batched_outputs(proto, feeds))
    except MemoryBudgetExceeded:
        raise
    except Exception as exc:  # feeds the graph rejects (e.g. made up for unusual inputs): check structure only
        reference, unchecked = None, f"numbers not checked: the input graph does not run on the samples ({exc})"
    stages: dict[str, str] = {}
    for name, stage in STAGES.items():
        if not getattr(config, name):
            continue
        nodes = len(proto.graph.node)
        if name in SUPERLINEAR and nodes > config.max_nodes:
            stages[name] = (
                f"skipped: {nodes} nodes, over max_nodes {config.max_nodes} (its cost grows faster than the graph)"
            )
            continue
        try:
            candidate = stage(copied(proto))  # onnxsim edits its input in place, also when it then fails
            onnx.checker.check_model(candidate)
            why = batches_mismatch(reference, batched_outputs(candidate, feeds)) if reference is not None else None
        except MemoryBudgetExceeded:
            raise
        except Exception as exc:  # a stage that crashes is skipped like one that breaks the numbers
            why = f"{type(exc).__name__}: {_first_line(exc)}"
        if why:
            stages[name] = f"dropped: {why}"
            continue
        stages[name] = "kept" if reference is not None else f"kept ({unchecked[:200]})"
        proto = candidate
    return proto, stages


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def simplify_proto(proto: Any, config: SimplifyConfig = SimplifyConfig(), feeds: Feeds | None = None) -> Any:
    """The simplified graph, each stage checked on `feeds` (default: seeded random inputs)."""
    return simplify_stages(proto, config, feeds if feeds is not None else sample_feeds(proto, None))[0]


class Simplify(Pass):
    name = "simplify"
    Config = SimplifyConfig
    requires = frozenset({"onnx"})
    reads = frozenset({"data.calibration", "data.validation"})  # real samples the stages are checked on
    produces = frozenset({"simplified"})

    cacheable = True

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        before = op_counts(state.onnx)
        feeds = sample_feeds(state.onnx, ctx.calibration or ctx.validation, self.config.samples)
        proto, stages = simplify_stages(state.onnx, self.config, feeds)
        for stage, outcome in stages.items():
            if outcome.startswith(("dropped", "skipped")):
                ctx.instruments.log(f"warning: simplify: stage '{stage}' {outcome}")
        after = op_counts(proto)
        metrics = {"nodes_before": sum(before.values()), "nodes_after": sum(after.values()), "ops": after}
        metrics["stages"] = stages
        modified = proto.SerializeToString(deterministic=True) != state.onnx.SerializeToString(deterministic=True)
        return PassResult(state.replace(onnx=proto) if modified else state, modified, metrics)
