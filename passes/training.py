"""The training loop every training pass shares (finetune, prune.gradual, distill, qat): optimizers,
LR schedules with warmup, L1/L2 regularisation, label smoothing, augmentation, holdout early stop."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator

from deployc.compiler.contracts import Context
from deployc.data.dataset import Dataset
from deployc.errors import UsageError

# loss_fn(module, inputs, labels) -> scalar tensor; the default is cross-entropy (int labels) or MSE (float labels)
LossFn = Callable[[Any, list[Any], Any], Any]
# called after each epoch with (epoch index, module); a gradual pass raises sparsity here. Returning True
# says the module's parameters were replaced (e.g. channels removed): fit() then rebuilds its optimizer.
EpochHook = Callable[[int, Any], bool | None]


class TrainConfig(BaseModel):
    """Options of the shared training loop; passes that train embed these keys in their own config."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(5, ge=0)
    batch_size: int = Field(64, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: PositiveFloat | Literal["auto"] = Field(
        1e-3, description="learning rate, or auto: a learning-rate range test on the training loss picks it"
    )
    momentum: float = Field(0.9, ge=0, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (decoupled for adamw)")
    l1: float = Field(0.0, ge=0, description="L1 penalty on weights, added to the loss")
    schedule: Literal["constant", "step", "cosine", "cyclic", "onecycle"] = "cosine"
    step_every: int = Field(3, gt=0, description="step schedule: epochs between LR decays")
    step_gamma: float = Field(0.1, gt=0, le=1, description="step schedule: LR factor at each decay")
    warmup_epochs: float = Field(0.0, ge=0, description="linear LR warm-up, in epochs")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    dropout: float | None = Field(None, ge=0, lt=1, description="set p of every nn.Dropout in the model while training")
    augment: list[dict[str, Any]] = Field(
        default_factory=list, description="augmentations, e.g. [{shift: {pixels: 1}}]"
    )
    holdout: float = Field(0.1, ge=0, lt=0.5, description="fraction of the training data kept out for early stopping")
    early_stop_patience: int | None = Field(None, gt=0, description="stop after N epochs without holdout improvement")
    seed: int = 0

    @field_validator("augment")
    @classmethod
    def _known_augmentations(cls, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from deployc.passes.augment import check_augment

        try:
            check_augment(specs)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return specs


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, holdout_metric, lr
    best_epoch: int = -1
    stopped_early: bool = False
    lr: float = 0.0  # the peak learning rate used: the configured one, or what the range test picked
    lr_range: list[tuple[float, float]] = field(default_factory=list)  # range test: (lr, smoothed loss) per step

    def epochs_to_converge(self, tolerance: float = 0.005) -> int:
        """First epoch whose holdout metric is within `tolerance` of the best one (1-based)."""
        scores = [h["holdout_metric"] for h in self.history]
        if not scores:
            return 0
        best = max(scores)
        return next(i + 1 for i, s in enumerate(scores) if s >= best - tolerance)


def _optimizer(params: Any, cfg: TrainConfig, lr: float) -> Any:
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """LR multiplier at a global step: warm-up then the configured schedule (one formula, easy to plot)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, total - warm)  # 0 → 1 over the post-warm-up steps
    epoch = step // steps_per_epoch
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.step_gamma ** (epoch // cfg.step_every)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "cyclic":  # triangular cycles of two epochs between lr/10 and lr
        phase = (step % (2 * steps_per_epoch)) / steps_per_epoch
        return 0.1 + 0.9 * (1 - abs(phase - 1))
    # onecycle: ramp from lr/25 to lr over the first 30%, then cosine down to lr/1e4
    if t < 0.3:
        return 0.04 + 0.96 * t / 0.3
    return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t - 0.3) / 0.7))


def default_loss(cfg: TrainConfig) -> LossFn:
    import torch.nn.functional as F

    def loss(module: Any, inputs: list[Any], labels: Any) -> Any:
        out = module(*inputs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if labels.dtype.is_floating_point:
            return F.mse_loss(out, labels.reshape(out.shape))
        return F.cross_entropy(out, labels, label_smoothing=cfg.label_smoothing)

    return loss


def holdout_accuracy(module: Any, data: Dataset, names: list[str], batch: int = 256) -> float:
    """Top-1 on class labels, or −MSE on float labels (higher is better either way)."""
    import torch

    module.eval()
    hits, sq, n = 0.0, 0.0, 0
    with torch.no_grad():
        for x, y in data.batches(batch):
            out = module(*[torch.from_numpy(x[k]) for k in names])
            out = (out[0] if isinstance(out, (tuple, list)) else out).numpy()
            if np.issubdtype(y.dtype, np.integer):
                hits += float((out.reshape(len(y), -1).argmax(1) == y).sum())
            else:
                sq += float(((out - y.reshape(out.shape)) ** 2).sum())
            n += len(y)
    return hits / n if hits or not sq else -sq / n


def split_holdout(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    if fraction <= 0 or len(data) < 10:
        return data, None
    order = np.random.default_rng(seed).permutation(len(data))
    cut = max(1, int(len(data) * fraction))
    pick = lambda idx: Dataset({k: v[idx] for k, v in data.inputs.items()}, data.labels[idx], data.source)  # noqa: E731
    return pick(np.sort(order[cut:])), pick(np.sort(order[:cut]))


def fit(
    module: Any,
    data: Dataset,
    cfg: TrainConfig,
    ctx: Context | None,
    names: list[str],
    loss_fn: LossFn | None = None,
    epoch_hook: EpochHook | None = None,
    extra_params: list[Any] | None = None,
    description: str = "train",
) -> FitResult:
    """Train `module` in place on `data` (labels required) and restore its best holdout epoch when early-stopping.

    `names` are the model input names in call order; `extra_params` (e.g. distillation adapters) train alongside.
    """
    import torch

    from deployc.passes.augment import build_augmenter

    if data.labels is None:
        raise UsageError(f"data.train ({data.source}) has no labels; training passes need them")
    train, holdout = split_holdout(data, cfg.holdout, cfg.seed)
    loss_fn = loss_fn or default_loss(cfg)
    if cfg.dropout is not None:
        for m in module.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = cfg.dropout
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    x_all = {k: torch.from_numpy(v) for k, v in train.inputs.items()}
    y_all = torch.from_numpy(train.labels)
    result, best, best_state, waited = FitResult(), -math.inf, None, 0
    if cfg.lr == "auto":
        result.lr_range = lr_range_test(module, x_all, y_all, names, cfg, loss_fn, extra_params or [])
        result.lr = suggest_lr(result.lr_range)
    else:
        result.lr = cfg.lr
    torch.manual_seed(cfg.seed)  # after the range test: training draws the same numbers whatever the lr setting
    augment = build_augmenter(cfg.augment, cfg.seed)

    def optimizer_and_schedule(step: int) -> tuple[Any, Any]:
        params = [p for p in module.parameters() if p.requires_grad] + list(extra_params or [])
        opt = _optimizer(params, cfg, result.lr)
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])  # lets LambdaLR resume at `step`
        return opt, torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(cfg, s, steps_per_epoch), last_epoch=step - 1
        )

    opt, sched = optimizer_and_schedule(0)
    gen = torch.Generator().manual_seed(cfg.seed)
    progress = ctx.instruments.progress(description, cfg.epochs) if ctx else _null_progress()
    with progress as advance:
        for epoch in range(cfg.epochs):
            module.train()
            total, count = 0.0, 0
            for idx in torch.randperm(len(y_all), generator=gen).split(cfg.batch_size):
                inputs = [augment(x_all[k][idx], k) for k in names]
                loss = loss_fn(module, inputs, y_all[idx])
                if cfg.l1:
                    loss = loss + cfg.l1 * sum(p.abs().sum() for n, p in module.named_parameters() if p.ndim > 1)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            if epoch_hook and epoch_hook(epoch, module):
                opt, sched = optimizer_and_schedule(
                    (epoch + 1) * steps_per_epoch
                )  # moments of removed channels are gone
            score = holdout_accuracy(module, holdout, names) if holdout is not None else -total / count
            result.history.append(
                {"epoch": epoch + 1, "loss": total / count, "holdout_metric": score, "lr": opt.param_groups[0]["lr"]}
            )
            advance(1, loss=total / count, holdout=score)
            if score > best + 1e-9:
                best, waited, result.best_epoch = score, 0, epoch + 1
                if cfg.early_stop_patience:
                    best_state = copy.deepcopy(module.state_dict())
            else:
                waited += 1
                if cfg.early_stop_patience and waited >= cfg.early_stop_patience:
                    result.stopped_early = True
                    break
    if best_state is not None and result.stopped_early:
        module.load_state_dict(best_state)
    module.eval()
    return result


RANGE_STEPS, RANGE_LO, RANGE_HI = 60, 1e-6, 1.0  # ten steps per decade


def lr_range_test(
    module: Any,
    x_all: dict[str, Any],
    y_all: Any,
    names: list[str],
    cfg: TrainConfig,
    loss_fn: LossFn,
    extra_params: list[Any],
) -> list[tuple[float, float]]:
    """Smith's learning-rate range test (fastai's lr_find): from the current weights, train RANGE_STEPS batches
    at an exponentially rising rate and record the smoothed loss until it diverges; then restore every weight
    and buffer. Written here because torch-lr-finder calls model(x) and criterion(out, y): neither fits
    multi-input models nor a loss that needs the teacher's outputs for the same batch."""
    import torch

    from deployc.passes.augment import build_augmenter

    saved = copy.deepcopy(module.state_dict())
    saved_extra = [p.detach().clone() for p in extra_params]
    opt = _optimizer([p for p in module.parameters() if p.requires_grad] + extra_params, cfg, RANGE_LO)
    augment = build_augmenter(cfg.augment, cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    batches: Any = iter(())
    curve: list[tuple[float, float]] = []
    avg, lowest = 0.0, math.inf
    module.train()
    for i in range(RANGE_STEPS):
        idx = next(batches, None)
        if idx is None:
            batches = iter(torch.randperm(len(y_all), generator=gen).split(cfg.batch_size))
            idx = next(batches)
        lr = RANGE_LO * (RANGE_HI / RANGE_LO) ** (i / (RANGE_STEPS - 1))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = loss_fn(module, [augment(x_all[k][idx], k) for k in names], y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        avg = 0.9 * avg + 0.1 * float(loss.detach())
        smooth = avg / (1 - 0.9 ** (i + 1))  # bias-corrected moving average
        if not math.isfinite(smooth) or smooth > 4 * lowest:
            break  # diverged: higher rates only do worse
        curve.append((lr, smooth))
        lowest = min(lowest, smooth)
    with torch.no_grad():
        module.load_state_dict(saved)
        for p, v in zip(extra_params, saved_extra):
            p.copy_(v)
    if not curve:
        raise UsageError(f"lr: auto: the training loss is not finite at lr {RANGE_LO:g}; the model or data is broken")
    return curve


def suggest_lr(curve: list[tuple[float, float]]) -> float:
    """A tenth of the rate at the lowest smoothed loss (fastai's classic rule: well inside the stable region)."""
    return min(curve, key=lambda point: point[1])[0] / 10


class _null_progress:
    def __enter__(self) -> Callable[..., None]:
        return lambda n=1, **kw: None

    def __exit__(self, *exc: Any) -> None:
        return None
