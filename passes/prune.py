"""prune.magnitude (unstructured, torch.nn.utils.prune) and prune.structured (channels, Torch-Pruning's
dependency graph): both report params, MACs, metric, ONNX size and latency before and after."""

from __future__ import annotations

import copy
import fnmatch
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployc.compiler.contracts import Context, Pass, PassResult
from deployc.core.config import suggest
from deployc.core.state import ModelState, Table
from deployc.errors import UsageError
from deployc.passes import model_stats
from deployc.passes.model_stats import (
    layer_sparsity,
    measure,
    prunable_layers,
    stats_metrics,
    stats_timings,
    summary_row,
    summary_table,
)


def match_layers(module: Any, patterns: list[str], key: str) -> set[str]:
    """Qualified module names matching fnmatch `patterns`; a pattern matching nothing is a UsageError."""
    names = {n for n, _ in module.named_modules() if n}
    hits: set[str] = set()
    for i, pattern in enumerate(patterns):
        found = {n for n in names if fnmatch.fnmatchcase(n, pattern) or n.startswith(pattern + ".")}
        if not found:
            raise UsageError(f"{key}[{i}]: no layer named '{pattern}'{suggest(pattern, names)}")
        hits |= found
    return hits


def output_layers(module: Any, state: ModelState) -> set[str]:
    """Prunable layers whose output is a model output (up to reshapes), plus the last one to run.

    Pruning their output channels would change what the model returns, so no pass ever does.
    """
    import torch

    layers = prunable_layers(module)
    seen: dict[str, Any] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            out = module.eval()(*state.example_tensors())
    finally:
        for h in hooks:
            h.remove()
    outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
    final = {
        n
        for n, o in seen.items()
        if isinstance(o, torch.Tensor)
        and any(o.numel() == t.numel() and torch.equal(o.reshape(-1), t.reshape(-1)) for t in outs)
    }
    if seen:
        final.add(list(seen)[-1])  # dicts keep call order: the last layer to run
    return final


# ---------------------------------------------------------------------------------------------- magnitude


class MagnitudeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sparsity: float = Field(0.8, gt=0, lt=1, description="fraction of prunable weights set to zero")
    scope: Literal["global", "layer"] = Field(
        "global", description="rank weights across all layers, or prune each layer to `sparsity`"
    )
    skip: list[str] = Field(default_factory=list, description="layer names (fnmatch patterns) left dense")
    skip_output_layers: bool = Field(False, description="also leave the layers that produce the model outputs dense")
    measure_onnx: bool = Field(True, description="export before/after to report ONNX size, zip size and latency")


class PruneMagnitude(Pass):
    """Unstructured magnitude pruning of Conv/Linear weights; masks are folded in (no hooks remain)."""

    name = "prune.magnitude"
    Config = MagnitudeConfig
    requires = frozenset({"torch"})
    produces = frozenset({"pruned"})
    invalidates = frozenset({"onnx"})
    reads_config = frozenset()

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        from torch.nn.utils import prune

        cfg: MagnitudeConfig = self.config
        module = copy.deepcopy(state.module).eval()
        skipped = match_layers(module, cfg.skip, "prune.magnitude.skip")
        if cfg.skip_output_layers:
            skipped |= output_layers(module, state)
        layers = {
            n: m
            for n, m in prunable_layers(module).items()
            if not any(n == s or n.startswith(s + ".") for s in skipped)
        }
        if not layers:
            raise UsageError("prune.magnitude.skip: every Conv/Linear layer is skipped; nothing to prune")
        before = measure(module, state, ctx, cfg.measure_onnx)
        zeros_before = layer_sparsity(module)
        if cfg.scope == "global":
            prune.global_unstructured(
                [(m, "weight") for m in layers.values()], prune.L1Unstructured, amount=cfg.sparsity
            )
        else:
            for m in layers.values():
                prune.l1_unstructured(m, "weight", amount=cfg.sparsity)
        for m in layers.values():
            prune.remove(m, "weight")  # weight = weight_orig * mask, as a plain parameter again
        after = measure(module, state, ctx, cfg.measure_onnx)
        per_layer = layer_sparsity(module)
        pruned_zeros = sum(per_layer[n][0] for n in layers)
        pruned_total = sum(per_layer[n][1] for n in layers)
        rows = [
            [n, "skipped" if n not in layers else cfg.scope, f"{t:,}", f"{zeros_before[n][0] / t:.1%}", f"{z / t:.1%}"]
            for n, (z, t) in per_layer.items()
        ]
        metrics = stats_metrics(before, after) | {
            "sparsity": pruned_zeros / pruned_total,
            "model_sparsity": 1 - after.nonzero_params / after.params,
            "layers_pruned": len(layers),
        }
        tables = (
            Table(
                "prune.magnitude: sparsity per layer",
                ("layer", "pruned", "weights", "zeros before", "zeros after"),
                tuple(map(tuple, rows)),
            ),
            summary_table(
                "prune.magnitude: what it buys (dense runtimes skip no zeros, so latency stays; "
                "the zip size shows the storage gain)",
                [summary_row(f"magnitude {cfg.scope} {cfg.sparsity:.0%}", before, after)],
            ),
        )
        modified = pruned_zeros > sum(zeros_before[n][0] for n in layers)
        return PassResult(
            state.replace(module=module, onnx=None), modified, metrics, tables, stats_timings(before, after)
        )


# ---------------------------------------------------------------------------------------------- structured

Importance = Literal["l1", "l2", "bn_scale", "taylor"]


class StructuredConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    ratio: float | None = Field(
        None, gt=0, lt=1, description="fraction of channels removed from each prunable group (default 0.5)"
    )
    target_macs: float | None = Field(None, gt=0, lt=1, description="prune until MACs ≤ this fraction of the original")
    importance: Importance = Field(
        "l2", description="channel ranking: l1/l2 weight norm, bn_scale (BN γ), taylor (|w·∂L/∂w|)"
    )
    scope: Literal["global", "layer"] = Field(
        "layer", description="rank channels across the model, or within each layer"
    )
    round_to: int | None = Field(
        None, gt=1, description="keep channel counts multiples of this (e.g. 8 for SIMD/tensor cores)"
    )
    ignore: list[str] = Field(
        default_factory=list, description="layer names (fnmatch patterns) whose outputs are never pruned"
    )
    max_layer_ratio: float = Field(
        0.9, gt=0, lt=1, description="no layer loses more than this fraction of its channels"
    )
    taylor_batches: int = Field(4, gt=0, description="training batches whose gradients rank channels (taylor)")
    measure_onnx: bool = Field(True, description="export before/after to report ONNX size and latency")

    @model_validator(mode="after")
    def _one_target(self) -> StructuredConfig:
        if self.ratio is not None and self.target_macs is not None:
            raise ValueError("give ratio or target_macs, not both")
        return self

    @property
    def channel_ratio(self) -> float:
        return 0.5 if self.ratio is None else self.ratio


def importance_estimator(name: str) -> Any:
    import torch_pruning as tp

    return {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
    }[name]()


def taylor_gradients(module: Any, state: ModelState, ctx: Context | None, batches: int) -> None:
    """Accumulate loss gradients on a few labelled batches (training data, else calibration data)."""
    import torch
    import torch.nn.functional as F

    data = (
        None
        if ctx is None
        else ctx.train
        if ctx.train is not None and ctx.train.labels is not None
        else ctx.calibration
    )
    if data is None or data.labels is None:
        raise UsageError(
            "prune.structured.importance: 'taylor' needs labelled samples (data.train or labelled data.calibration)"
        )
    module.zero_grad()
    module.train()
    for i, (x, y) in enumerate(data.batches(64)):
        if i == batches:
            break
        out = module(*[torch.from_numpy(x[s.name]) for s in state.inputs])
        out = out[0] if isinstance(out, (tuple, list)) else out
        y = torch.from_numpy(y)
        loss = F.mse_loss(out, y.reshape(out.shape)) if y.dtype.is_floating_point else F.cross_entropy(out, y)
        loss.backward()
    module.eval()


def _channels(module: Any) -> dict[str, int]:
    out = {}
    for n, m in prunable_layers(module).items():
        out[n] = m.out_channels if hasattr(m, "out_channels") else m.out_features
    return out


def prune_channels(module: Any, state: ModelState, ctx: Context | None, cfg: StructuredConfig) -> Any:
    """Prune `module` in place per `cfg`; returns the Torch-Pruning pruner (its DG knows the groups)."""
    import torch_pruning as tp

    ignored_names = match_layers(module, cfg.ignore, "prune.structured.ignore") | output_layers(module, state)
    modules = dict(module.named_modules())
    ignored = [modules[n] for n in sorted(ignored_names)]
    steps = 20 if cfg.target_macs is not None else 1
    target_ratio = cfg.max_layer_ratio if cfg.target_macs is not None else cfg.channel_ratio
    pruner = tp.pruner.BasePruner(
        module,
        state.example_tensors(),
        importance=importance_estimator(cfg.importance),
        global_pruning=cfg.scope == "global",
        pruning_ratio=target_ratio,
        max_pruning_ratio=cfg.max_layer_ratio,
        iterative_steps=steps,
        ignored_layers=ignored,
        round_to=cfg.round_to,
    )
    base_macs = model_stats.params_and_macs(module, state)[1]
    for _ in range(steps):
        if cfg.importance == "taylor":
            taylor_gradients(module, state, ctx, cfg.taylor_batches)
        pruner.step()
        if cfg.target_macs is not None and model_stats.params_and_macs(module, state)[1] <= cfg.target_macs * base_macs:
            break
    module.zero_grad(set_to_none=True)
    return pruner


class PruneStructured(Pass):
    """Removes whole channels/neurons and rewires every dependent layer (adds, concat, depthwise, BN, linear)."""

    name = "prune.structured"
    Config = StructuredConfig
    requires = frozenset({"torch"})
    produces = frozenset({"pruned"})
    invalidates = frozenset({"onnx"})
    reads_config = frozenset()

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        cfg: StructuredConfig = self.config
        module = copy.deepcopy(state.module).eval()
        before = measure(module, state, ctx, cfg.measure_onnx)
        channels_before = _channels(module)
        try:
            prune_channels(module, state, ctx, cfg)
        except UsageError:
            raise
        except Exception as exc:  # the dependency tracer names what it could not follow
            raise UsageError(
                f"prune.structured: Torch-Pruning could not prune this model: {type(exc).__name__}: {exc}"
            ) from exc
        after = measure(module, state, ctx, cfg.measure_onnx)
        channels_after = _channels(module)
        rows = [
            [
                n,
                channels_before[n],
                channels_after.get(n, "removed"),
                f"{channels_after.get(n, 0) / channels_before[n]:.2f}",
            ]
            for n in channels_before
        ]
        how = f"ratio {cfg.channel_ratio:.0%}" if cfg.target_macs is None else f"target MACs {cfg.target_macs:.0%}"
        metrics = stats_metrics(before, after) | {
            "channels_removed": sum(channels_before.values()) - sum(channels_after.values()),
        }
        tables = (
            Table(
                "prune.structured: output channels per layer",
                ("layer", "before", "after", "kept"),
                tuple(map(tuple, rows)),
            ),
            summary_table(
                "prune.structured: what it buys",
                [summary_row(f"structured {cfg.importance} {cfg.scope} {how}", before, after)],
            ),
        )
        return PassResult(
            state.replace(module=module, onnx=None),
            after.params < before.params,
            metrics,
            tables,
            stats_timings(before, after),
        )
