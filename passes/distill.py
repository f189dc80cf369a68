"""distill — train a smaller student to imitate the teacher (the model as loaded, or a configured one):
soft targets with a hard-label mix, embedding cosine for label-free encoders, feature-map hints."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployc.compiler.contracts import Context, Pass, PassResult
from deployc.core import memory
from deployc.core.config import BuildConfig, ModelConfig
from deployc.core.state import ModelState, Table
from deployc.data.dataset import Dataset
from deployc.errors import UsageError
from deployc.passes.student import StudentConfig, count_params, make_student
from deployc.passes.training import TrainConfig, fit, split_holdout


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    factory: str = Field(description="'file.py:callable' or 'module:callable' returning the teacher nn.Module")
    weights: Path | None = Field(None, description=".safetensors or state_dict file for the factory's module")


class HintConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    student: str = Field(description="dotted module path in the student, e.g. layer2")
    teacher: str = Field(description="dotted module path in the teacher whose output the student's should match")
    weight: float = Field(1.0, gt=0)


class DistillConfig(TrainConfig):
    """The shared training loop's options (passes/training.py: TrainConfig) plus what to distill and how."""

    student: StudentConfig = Field(default_factory=StudentConfig)
    teacher: TeacherConfig | None = Field(None, description="default: the model as loaded (the build's reference)")
    loss: Literal["soft", "embedding"] = Field(
        "soft",
        description="soft: KL on temperature-softened outputs (+ hard labels); embedding: 1 − cosine to the teacher's outputs",
    )
    temperature: float = Field(4.0, gt=0, description="soft: softmax temperature")
    alpha: float = Field(
        0.9, ge=0, le=1, description="soft: weight of the soft-target term; 1 − alpha goes to the hard labels"
    )
    hints: list[HintConfig] = Field(
        default_factory=list, description="feature-map pairs matched through learned adapters"
    )
    hint_loss: Literal["mse", "cosine"] = "mse"
    freeze: list[str] = Field(
        default_factory=list, description="student parameter-name prefixes kept frozen, e.g. encoder.embeddings"
    )
    measure_latency: bool = Field(
        True, description="time teacher and student ONNX exports (batch 1) for the report table"
    )

    @model_validator(mode="after")
    def _embedding_without_augment(self) -> DistillConfig:
        if self.loss == "embedding" and self.augment:
            raise ValueError(
                "augment: embedding distillation compares with the teacher's outputs on the "
                "unaugmented inputs; remove augment or use loss: soft"
            )
        return self


def load_teacher(cfg: TeacherConfig, state: ModelState, config: BuildConfig) -> Any:
    """The configured teacher through the model loader (same weight checks), errors prefixed with our key."""
    from deployc.compiler.loader import load_model

    model = ModelConfig(factory=cfg.factory, weights=cfg.weights, inputs=config.model.inputs)
    try:
        return load_model(config.model_copy(update={"model": model})).module
    except UsageError as exc:
        raise UsageError(f"distill.teacher: {exc}") from None


def run_model(module: Any, data: Dataset, names: list[str], batch: int = 128) -> np.ndarray:
    """The module's first output over the whole dataset, in eval mode, without gradients."""
    import torch

    from deployc.passes.distill_losses import first_tensor

    module.eval()
    parts = []
    with torch.no_grad():
        batches = data.within_budget(memory.module_estimate(module, names), batch, "the teacher's outputs")
        for x, _ in data.batches(batches):
            parts.append(first_tensor(module(*[torch.from_numpy(x[k]) for k in names])).numpy())
    return np.concatenate(parts)


def _freeze(student: Any, prefixes: list[str]) -> int:
    """Turn off gradients for parameters under the prefixes; returns how many parameters stay frozen."""
    names = [n for n, _ in student.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            raise UsageError(
                f"distill.freeze: no student parameter starts with '{prefix}' (e.g. {', '.join(names[:3])})"
            )
    frozen = 0
    for n, p in student.named_parameters():
        if any(n.startswith(prefix) for prefix in prefixes):
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


class Distill(Pass):
    name = "distill"
    Config = DistillConfig
    requires = frozenset({"torch", "data.train"})
    produces = frozenset({"distilled"})
    invalidates = frozenset({"onnx", "simplified", "quantized"})
    reads_config = frozenset()

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        import torch

        from deployc.passes.distill_losses import (
            FeatureHints,
            embedding_loss,
            first_tensor,
            knowledge_distillation_loss,
        )

        cfg: DistillConfig = self.config
        names = [s.name for s in state.inputs]
        teacher = (load_teacher(cfg.teacher, state, ctx.config) if cfg.teacher else state.module).eval()
        example = state.example_tensors(batch=2)
        student, how = make_student(cfg.student, teacher, example, ctx.config.base_dir)
        frozen = _freeze(student, cfg.freeze)

        data = ctx.train
        teacher_out = run_model(teacher, data, names)
        if cfg.loss == "soft" and cfg.alpha < 1 and data.labels is None:
            raise UsageError(
                f"distill.alpha: {cfg.alpha} mixes in hard labels, and data.train ({data.source}) has "
                "none; set alpha: 1 or give labelled training data"
            )
        # label-free losses train against the teacher's outputs: they become the labels fit() sees
        labels = data.labels if cfg.loss == "soft" and data.labels is not None else teacher_out
        train = Dataset(data.inputs, labels, data.source)

        hints = None
        extra: list[Any] = []
        if cfg.hints:
            hints = FeatureHints(student, teacher, [(h.student, h.teacher, h.weight) for h in cfg.hints], cfg.hint_loss)
            probe = [torch.from_numpy(v[:2]) for v in (data.inputs[k] for k in names)]
            with torch.no_grad():  # one forward of each sizes the adapters
                student.eval()(*probe)
                teacher(*probe)
            extra = hints.build_adapters()
        per_batch_teacher = cfg.loss == "soft" or hints is not None

        def loss_fn(module: Any, inputs: list[Any], batch_labels: Any) -> Any:
            if per_batch_teacher:
                with torch.no_grad():
                    t_out = first_tensor(teacher(*inputs))
            s_out = first_tensor(module(*inputs))
            if cfg.loss == "soft":
                hard = batch_labels if not batch_labels.dtype.is_floating_point else None
                loss = knowledge_distillation_loss(
                    s_out, t_out, hard, cfg.temperature, cfg.alpha if hard is not None else 1.0
                )
            else:
                loss = embedding_loss(s_out, batch_labels.reshape(s_out.shape))
            return loss + hints.loss() if hints is not None else loss

        try:
            result = fit(student, train, cfg, ctx, names, loss_fn=loss_fn, extra_params=extra, description="distill")
        finally:
            if hints is not None:
                hints.remove()
        return self._result(
            state.replace(module=student, onnx=None),
            teacher,
            student,
            state,
            ctx,
            data,
            teacher_out,
            how,
            frozen,
            result,
            len(extra) > 0,
        )

    def _result(
        self,
        new_state: ModelState,
        teacher: Any,
        student: Any,
        state: ModelState,
        ctx: Context,
        data: Dataset,
        teacher_out: np.ndarray,
        how: dict[str, Any],
        frozen: int,
        result: Any,
        adapters: bool,
    ) -> PassResult:
        """Teacher vs student on the training holdout (the samples fit() kept out): params, latency, metric."""
        from deployc.data.metrics import cosine_rows, get_metric

        cfg: DistillConfig = self.config
        names = [s.name for s in state.inputs]
        p_teacher, p_student = count_params(teacher), count_params(student)
        metrics: dict[str, Any] = {
            **how,
            "teacher_params": p_teacher,
            "student_params": p_student,
            "params_ratio": p_student / p_teacher,
            "frozen_params": frozen,
            "adapters": adapters,
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
        }
        if result.history:
            metrics["final_loss"] = result.history[-1]["loss"]
        metric = get_metric(ctx.config)
        # the same split fit() made: indices ride along as labels
        _, hold = split_holdout(Dataset(data.inputs, np.arange(len(data)), data.source), cfg.holdout, cfg.seed)
        value = {"teacher": None, "student": None}
        cosine = None
        if hold is not None:
            idx = hold.labels
            held = Dataset({k: v[idx] for k, v in data.inputs.items()}, None, data.source)
            t_out, s_out = teacher_out[idx], run_model(student, held, names)
            cosine = float(cosine_rows(s_out, t_out).mean())
            targets = (
                None
                if metric.needs_labels and data.labels is None
                else (data.labels[idx] if metric.needs_labels else t_out)
            )
            if targets is not None:
                value = {"teacher": float(metric.fn([t_out], targets)), "student": float(metric.fn([s_out], targets))}
            metrics.update(
                holdout_samples=len(idx),
                holdout_cosine_to_teacher=cosine,
                **{f"holdout_metric_{k}": v for k, v in value.items() if v is not None},
            )
        ms: dict[str, float | None] = {"teacher": None, "student": None}
        if cfg.measure_latency:
            from deployc.passes.model_stats import onnx_size_and_latency

            ms = {k: onnx_size_and_latency(m, state)[2] for k, m in (("teacher", teacher), ("student", student))}
        fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
        rows = tuple(
            (
                who,
                f"{p:,}",
                f"{p / p_teacher:.3f}×",
                fmt(ms[who], ".3f"),
                fmt(value[who], ".4f"),
                fmt(1.0 if who == "teacher" else cosine, ".4f") if hold is not None else "—",
            )
            for who, p in (("teacher", p_teacher), ("student", p_student))
        )
        table = Table(
            f"distill: teacher vs student ({how['student']}; holdout = {len(hold) if hold else 0} "
            f"training samples kept out of fit)",
            (
                "model",
                "params",
                "params ×",
                "onnx fp32 ms (batch 1, 1 thread)",
                f"holdout {metric.name}",
                "holdout cosine to teacher",
            ),
            rows,
            timed=frozenset({3}),
        )
        timings = {f"onnx_ms_{k}": v for k, v in ms.items() if v is not None}
        return PassResult(new_state, True, metrics, (table,), timings)
