"""Distillation losses: soft targets (Hinton et al. 2015), embedding cosine, and feature-map hints
with learned adapters (FitNets, Romero et al. 2015)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from deployc.errors import UsageError


def first_tensor(out: Any) -> torch.Tensor:
    """The first tensor of a module output (tensor, tuple/list, or a Hugging Face ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    return first_tensor(out[0])


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened distributions, scaled by T² so its gradients keep
    their size as T changes."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student / t, dim=-1),
            F.log_softmax(teacher / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


def knowledge_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """alpha × soft-target loss + (1 − alpha) × cross-entropy on the hard labels."""
    loss = alpha * soft_target_loss(student, teacher, temperature)
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    return loss


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 − cosine similarity, averaged over the batch: embeddings are compared by angle, not length."""
    return (1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1)).mean()


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: Literal["mse", "cosine"]) -> torch.Tensor:
    """MSE, or 1 − cosine along the channel axis (dim 1 for conv maps, the last dim for sequences)."""
    if kind == "mse":
        return F.mse_loss(student, teacher)
    dim = 1 if student.ndim == 4 else -1
    return (1 - F.cosine_similarity(student, teacher, dim=dim)).mean()


def make_adapter(student: torch.Tensor, teacher: torch.Tensor, where: str) -> nn.Module:
    """A learned map from the student's feature width to the teacher's: 1×1 conv for (N,C,H,W) maps,
    linear for (..., C) features; identity when the widths already agree."""
    if student.ndim != teacher.ndim:
        raise UsageError(
            f"{where}: student feature {list(student.shape)} and teacher feature {list(teacher.shape)} differ in rank"
        )
    if student.ndim == 4:
        if student.shape[2:] != teacher.shape[2:]:
            raise UsageError(
                f"{where}: spatial sizes differ (student {list(student.shape[2:])}, "
                f"teacher {list(teacher.shape[2:])}); pick layers at the same resolution"
            )
        cs, ct = student.shape[1], teacher.shape[1]
        return nn.Identity() if cs == ct else nn.Conv2d(cs, ct, 1, bias=False)
    if student.shape[:-1] != teacher.shape[:-1]:
        raise UsageError(
            f"{where}: student feature {list(student.shape)} and teacher feature "
            f"{list(teacher.shape)} differ outside the last (width) axis"
        )
    cs, ct = student.shape[-1], teacher.shape[-1]
    return nn.Identity() if cs == ct else nn.Linear(cs, ct, bias=False)


class FeatureHints:
    """Forward hooks that capture (student layer, teacher layer) outputs, plus one adapter per pair."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        pairs: list[tuple[str, str, float]],
        kind: Literal["mse", "cosine"],
    ):
        self.pairs, self.kind = pairs, kind
        self.captured: dict[tuple[str, str], torch.Tensor] = {}
        self.adapters = nn.ModuleList()
        self._handles = []
        for i, (s_name, t_name, _) in enumerate(pairs):
            for side, model, name in (("student", student, s_name), ("teacher", teacher, t_name)):
                try:
                    layer = model.get_submodule(name)
                except AttributeError:
                    raise UsageError(
                        f"distill.hints[{i}].{side}: no layer '{name}' in the {side} "
                        f"(layers: {', '.join(n for n, _ in model.named_children())}, ...)"
                    ) from None
                self._handles.append(layer.register_forward_hook(self._hook((side, name))))

    def _hook(self, key: tuple[str, str]) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            self.captured[key] = first_tensor(out)

        return hook

    def build_adapters(self) -> list[nn.Parameter]:
        """After one forward of both models: one adapter per pair; returns their parameters (to train)."""
        for i, (s_name, t_name, _) in enumerate(self.pairs):
            s, t = self.captured[("student", s_name)], self.captured[("teacher", t_name)]
            self.adapters.append(make_adapter(s, t, f"distill.hints[{i}] ({s_name} → {t_name})"))
        return list(self.adapters.parameters())

    def loss(self) -> torch.Tensor:
        total = torch.zeros(())
        for adapter, (s_name, t_name, weight) in zip(self.adapters, self.pairs):
            s, t = self.captured[("student", s_name)], self.captured[("teacher", t_name)]
            total = total + weight * feature_loss(adapter(s), t.detach(), self.kind)
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self.captured.clear()
