"""Students for distillation: built by a configured factory, or derived from the teacher —
layer-dropped (transformers: keep every other layer, initialised from the teacher's, as DistilBERT
did) or channel-reduced (CNNs: structural pruning with Torch-Pruning to a parameter budget)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployc.core.pyimport import import_callable
from deployc.errors import UsageError


class StudentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    derive: Literal["auto", "layers", "channels"] | None = Field(
        "auto",
        description="derive from the teacher: layers (drop layers), channels (prune), auto (layers when "
        "the teacher has a stack of identical layers, else channels); null with factory",
    )
    factory: str | None = Field(
        None, description="'file.py:callable' or 'module:callable' returning the student nn.Module"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    params_ratio: float = Field(
        0.5, gt=0, lt=1, description="channels: the student keeps at most this fraction of the teacher's params"
    )
    keep_layers: list[int] | None = Field(
        None, description="layers: teacher layer indices kept (default: every other, from 0)"
    )
    layers_path: str | None = Field(
        None, description="layers: dotted path of the layer ModuleList (default: the longest stack)"
    )
    keep_channels_of: list[str] = Field(
        default_factory=list, description="channels: modules never pruned besides the output layer"
    )

    @model_validator(mode="after")
    def _one_source(self) -> StudentConfig:
        if self.factory is not None and self.derive not in (None, "auto"):
            raise ValueError(f"give either factory or derive: {self.derive}, not both")
        if self.factory is None and self.derive is None:
            raise ValueError("give a factory or derive: auto | layers | channels")
        return self


def count_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_stacks(module: Any) -> dict[str, Any]:
    """Every nn.ModuleList of two or more blocks of one class (a transformer's layer stack), by dotted path."""
    from torch import nn

    return {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(c) for c in m}) == 1
    }


def layer_dropped(teacher: Any, keep: list[int] | None, path: str | None) -> tuple[Any, dict[str, Any]]:
    """A copy of the teacher keeping only some layers of its stack (default every other one), weights included."""
    from torch import nn

    stacks = layer_stacks(teacher)
    if path is None:
        if not stacks:
            raise UsageError(
                "distill.student.derive: layers: the teacher has no nn.ModuleList of identical layers; "
                "use derive: channels or a factory"
            )
        path = max(stacks, key=lambda n: len(stacks[n]))
    elif path not in stacks:
        raise UsageError(
            f"distill.student.layers_path: '{path}' is not a stack of identical layers in the teacher "
            f"(stacks: {', '.join(stacks) or 'none'})"
        )
    count = len(stacks[path])
    keep = list(range(0, count, 2)) if keep is None else keep
    bad = [i for i in keep if not 0 <= i < count]
    if bad or not keep or len(set(keep)) != len(keep):
        raise UsageError(f"distill.student.keep_layers: {keep} must be distinct indices in 0..{count - 1} of '{path}'")
    student = copy.deepcopy(teacher)
    layers = student.get_submodule(path)
    student.set_submodule(path, nn.ModuleList([layers[i] for i in keep]))
    for m in student.modules():  # Hugging Face configs record the depth; keep it truthful
        cfg = getattr(m, "config", None)
        if getattr(cfg, "num_hidden_layers", None) == count:
            cfg.num_hidden_layers = len(keep)
    return student, {"layers_path": path, "teacher_layers": count, "kept_layers": keep}


def _output_layer(module: Any) -> Any:
    """The last Linear/Conv registered: its outputs are the model's outputs, so its width must stay."""
    from torch import nn

    leaves = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    return leaves[-1] if leaves else None


def channel_reduced(
    teacher: Any, example: tuple[Any, ...], params_ratio: float, keep: list[str]
) -> tuple[Any, dict[str, Any]]:
    """A copy of the teacher with its least important channels removed (L2 group magnitude) until
    the parameter count is at most `params_ratio` of the teacher's."""
    import torch_pruning as tp

    budget = params_ratio * count_params(teacher)
    ratio = 1 - params_ratio**0.5  # conv→conv weights shrink with the square of the kept channels
    for _ in range(20):
        student = copy.deepcopy(teacher).eval()
        try:
            ignored = [student.get_submodule(name) for name in keep]
        except AttributeError as exc:
            raise UsageError(f"distill.student.keep_channels_of: {exc}") from None
        out_layer = _output_layer(student)
        ignored += [out_layer] if out_layer is not None else []
        pruner = tp.pruner.BasePruner(
            student,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            ignored_layers=ignored,
        )
        pruner.step()
        if count_params(student) <= budget:
            return student, {"channel_ratio": round(ratio, 4)}
        ratio = min(0.95, ratio + 0.02)  # input/output layers keep their widths, so overshoot a little
    raise UsageError(
        f"distill.student.params_ratio: {params_ratio} is unreachable by pruning channels "
        f"(best: {count_params(student) / count_params(teacher):.3f} of the teacher)"
    )


def make_student(
    cfg: StudentConfig, teacher: Any, example: tuple[Any, ...], base_dir: Path
) -> tuple[Any, dict[str, Any]]:
    """(student module, facts about how it was made) — the teacher is never modified."""
    import torch

    if cfg.factory is not None:
        fn = import_callable(cfg.factory, base_dir, "distill.student.factory")
        try:
            student = fn(**cfg.kwargs)
        except Exception as exc:
            raise UsageError(f"distill.student.factory: '{cfg.factory}' raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(student, torch.nn.Module):
            raise UsageError(
                f"distill.student.factory: '{cfg.factory}' returned {type(student).__name__}, not an nn.Module"
            )
        return student, {"student": f"factory {cfg.factory}"}
    derive = cfg.derive
    if derive == "auto":
        derive = "layers" if layer_stacks(teacher) else "channels"
    if derive == "layers":
        student, facts = layer_dropped(teacher, cfg.keep_layers, cfg.layers_path)
    else:
        student, facts = channel_reduced(teacher, example, cfg.params_ratio, cfg.keep_channels_of)
    return student, {"student": f"derived: {derive}", **facts}
