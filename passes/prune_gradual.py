"""prune.gradual — pruning during training (Zhu & Gupta 2017): sparsity, or the channel ratio, rises on a
schedule from epoch to epoch while the model trains, so it adapts to each step instead of one big cut."""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

from pydantic import Field, model_validator

from deployc.compiler.contracts import Context, Pass, PassResult
from deployc.core.state import ModelState, Table
from deployc.errors import UsageError
from deployc.passes.finetune import history_table
from deployc.passes.model_stats import (
    measure,
    prunable_layers,
    stats_metrics,
    stats_timings,
    summary_row,
    summary_table,
)
from deployc.passes.prune import Importance, importance_estimator, match_layers, output_layers, taylor_gradients
from deployc.passes.training import TrainConfig, fit


class GradualConfig(TrainConfig):
    mode: Literal["weights", "channels"] = Field("weights", description="zero single weights, or remove whole channels")
    sparsity: float = Field(
        0.8, gt=0, lt=1, description="final fraction of weights zeroed (weights) or channels removed (channels)"
    )
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="applied before the first epoch")
    schedule: Literal["cubic", "linear"] = Field(
        "cubic", description="cubic: Zhu & Gupta, fast early, gentle near the target"
    )
    ramp_epochs: int | None = Field(
        None, gt=0, description="epochs until the target is reached (default: 2/3 of epochs); the rest recover"
    )
    scope: Literal["global", "layer"] = "global"
    skip: list[str] = Field(default_factory=list, description="weights mode: layer names (fnmatch) left dense")
    importance: Importance = Field("l2", description="channels mode: channel ranking")
    round_to: int | None = Field(None, gt=1, description="channels mode: channel counts stay multiples of this")
    ignore: list[str] = Field(default_factory=list, description="channels mode: layers whose outputs are never pruned")
    measure_onnx: bool = Field(True, description="export before/after to report ONNX size and latency")

    @model_validator(mode="after")
    def _schedule_fits(self) -> GradualConfig:
        if self.initial_sparsity > self.sparsity:
            raise ValueError("initial_sparsity is above sparsity")
        if self.ramp_epochs is not None and self.ramp_epochs > self.epochs:
            raise ValueError(
                f"ramp_epochs ({self.ramp_epochs}) is more than epochs ({self.epochs}): the target would never be reached"
            )
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1: the schedule runs across training epochs")
        if self.early_stop_patience is not None:
            raise ValueError(
                "early_stop_patience: not with prune.gradual (stopping early would miss the target sparsity)"
            )
        return self

    @property
    def ramp(self) -> int:
        return self.ramp_epochs or max(1, math.ceil(self.epochs * 2 / 3))

    def sparsity_at(self, event: int) -> float:
        """Target after pruning event `event` (0 = before training, k = after epoch k); Zhu & Gupta's eq. (1)."""
        frac = min(event, self.ramp) / self.ramp
        shape = (1 - frac) ** 3 if self.schedule == "cubic" else 1 - frac
        return self.sparsity + (self.initial_sparsity - self.sparsity) * shape


class _WeightMasks:
    """Masks on Conv/Linear weights (torch.nn.utils.prune reparametrisation), re-thresholded by magnitude."""

    def __init__(self, layers: dict[str, Any], scope: str):
        from torch.nn.utils import prune

        self.layers, self.scope = layers, scope
        for m in layers.values():
            prune.identity(m, "weight")  # weight = weight_orig * weight_mask from now on

    def set(self, sparsity: float) -> None:
        import torch

        with torch.no_grad():
            if self.scope == "layer":
                for m in self.layers.values():
                    self._mask_smallest([m], sparsity)
            else:
                self._mask_smallest(list(self.layers.values()), sparsity)

    @staticmethod
    def _mask_smallest(modules: list[Any], sparsity: float) -> None:
        import torch

        # magnitude of the masked weight: pruned weights are 0, so sparsity only ever grows
        mags = torch.cat([(m.weight_orig * m.weight_mask).abs().flatten() for m in modules])
        k = int(round(sparsity * mags.numel()))
        keep = torch.ones_like(mags)
        if k:
            keep[torch.topk(mags, k, largest=False).indices] = 0
        for m, part in zip(modules, keep.split([m.weight_mask.numel() for m in modules])):
            m.weight_mask.copy_(part.view_as(m.weight_mask))

    def finish(self) -> None:
        from torch.nn.utils import prune

        for m in self.layers.values():
            prune.remove(m, "weight")

    def measured(self) -> float:
        zeros = sum(
            int((m.weight_orig * m.weight_mask == 0).sum()) for m in self.layers.values()
        )  # m.weight is refreshed only by forward
        return zeros / sum(m.weight.numel() for m in self.layers.values())


def _group_channels(pruner: Any) -> int:
    """Channels over Torch-Pruning's prunable groups, counted as its ratio counts them (once per coupled group)."""
    groups = pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)
    return sum(pruner.DG.get_out_channels(g[0][0].target.module) for g in groups)


class PruneGradual(Pass):
    name = "prune.gradual"
    Config = GradualConfig
    requires = frozenset({"torch", "data.train"})
    produces = frozenset({"pruned"})
    invalidates = frozenset({"onnx"})
    reads_config = frozenset()

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        cfg: GradualConfig = self.config
        module = copy.deepcopy(state.module).eval()
        before = measure(module, state, ctx, cfg.measure_onnx)
        schedule: list[list[Any]] = []
        if cfg.mode == "weights":
            hook, finish = self._weights(module, cfg, schedule)
        else:
            hook, finish = self._channels(module, state, ctx, cfg, schedule)
        hook(-1, module)
        result = fit(
            module, ctx.train, cfg, ctx, [s.name for s in state.inputs], epoch_hook=hook, description="prune.gradual"
        )
        finish()
        after = measure(module, state, ctx, cfg.measure_onnx)
        reached = schedule[-1][2] >= schedule[-1][1] - 0.02 and len(schedule) > cfg.ramp
        what = "weight sparsity" if cfg.mode == "weights" else "channels removed"
        metrics = stats_metrics(before, after) | {
            "target": cfg.sparsity,
            "reached_target": reached,
            "final_measured": schedule[-1][2],
            "target_epoch": cfg.ramp,
            "epochs_run": len(result.history),
        }
        steps = tuple(
            (e, f"{t:.3f}", f"{m:.3f}", f"{result.history[e - 1]['holdout_metric']:.4f}" if e > 0 else "—")
            for e, t, m in schedule
        )
        tables = (
            Table(
                f"prune.gradual: {cfg.schedule} schedule ({cfg.mode})",
                ("after epoch", "target", f"measured {what}", "holdout metric right after the step"),
                steps,
            ),
            summary_table(
                "prune.gradual: what it buys",
                [summary_row(f"gradual {cfg.mode} {cfg.schedule} {cfg.sparsity:.0%}", before, after)],
            ),
            history_table(result, "prune.gradual: training history"),
        )
        return PassResult(state.replace(module=module, onnx=None), True, metrics, tables, stats_timings(before, after))

    @staticmethod
    def _weights(module: Any, cfg: GradualConfig, schedule: list[list[Any]]) -> tuple[Any, Any]:
        skipped = match_layers(module, cfg.skip, "prune.gradual.skip")
        layers = {
            n: m
            for n, m in prunable_layers(module).items()
            if not any(n == s or n.startswith(s + ".") for s in skipped)
        }
        if not layers:
            raise UsageError("prune.gradual.skip: every Conv/Linear layer is skipped; nothing to prune")
        masks = _WeightMasks(layers, cfg.scope)

        def hook(epoch: int, _module: Any) -> None:
            event = epoch + 1
            if event <= cfg.ramp:
                masks.set(cfg.sparsity_at(event))
                schedule.append([event, cfg.sparsity_at(event), masks.measured()])

        return hook, masks.finish

    @staticmethod
    def _channels(
        module: Any, state: ModelState, ctx: Context, cfg: GradualConfig, schedule: list[list[Any]]
    ) -> tuple[Any, Any]:
        import torch_pruning as tp

        ratios = [0.0] + [cfg.sparsity_at(k) for k in range(cfg.ramp + 1)]  # pruner step k+1 → event k
        ignored = match_layers(module, cfg.ignore, "prune.gradual.ignore") | output_layers(module, state)
        modules = dict(module.named_modules())
        pruner = tp.pruner.BasePruner(
            module,
            state.example_tensors(),
            importance=importance_estimator(cfg.importance),
            global_pruning=cfg.scope == "global",
            pruning_ratio=cfg.sparsity,
            iterative_steps=len(ratios) - 1,
            iterative_pruning_ratio_scheduler=lambda r, n: ratios,
            ignored_layers=[modules[n] for n in sorted(ignored)],
            round_to=cfg.round_to,
        )
        channels0 = _group_channels(pruner)

        def hook(epoch: int, _module: Any) -> bool:
            event = epoch + 1
            if event > cfg.ramp:
                return False
            if cfg.importance == "taylor":
                taylor_gradients(module, state, ctx, 4)
            was = module.training
            pruner.step()
            module.train(was)
            schedule.append([event, cfg.sparsity_at(event), 1 - _group_channels(pruner) / channels0])
            return True

        return hook, lambda: module.zero_grad(set_to_none=True)
