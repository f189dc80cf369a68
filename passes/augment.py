"""Training-time data augmentation, configured as a list of {name: {options}} and applied per batch."""

from __future__ import annotations

from typing import Any, Callable

from pipeline.config import suggest
from pipeline.errors import UsageError

Augment = Callable[[Any, Any], Any]  # (batch tensor, torch.Generator) -> batch tensor


def _shift(pixels: int = 1) -> Augment:
    """Random translation of images (N, C, H, W) by up to `pixels`, zero-filled."""
    import torch

    def apply(x: Any, gen: Any) -> Any:
        if x.ndim != 4:
            return x
        dx, dy = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
        out = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        if dy > 0:
            out[:, :, :dy] = 0
        elif dy < 0:
            out[:, :, dy:] = 0
        if dx > 0:
            out[:, :, :, :dx] = 0
        elif dx < 0:
            out[:, :, :, dx:] = 0
        return out

    return apply


def _flip(p: float = 0.5) -> Augment:
    """Horizontal flip of images with probability p (per batch)."""
    import torch

    def apply(x: Any, gen: Any) -> Any:
        return torch.flip(x, dims=(-1,)) if x.ndim == 4 and float(torch.rand(1, generator=gen)) < p else x

    return apply


def _noise(std: float = 0.05) -> Augment:
    """Additive Gaussian noise on float inputs (images or series)."""
    import torch

    def apply(x: Any, gen: Any) -> Any:
        return x + std * torch.randn(x.shape, generator=gen) if x.is_floating_point() else x

    return apply


AUGMENTATIONS: dict[str, Callable[..., Augment]] = {"shift": _shift, "flip": _flip, "noise": _noise}


def build_augmenter(specs: list[dict[str, Any]], seed: int) -> Callable[[Any], Any]:
    """One callable applying every configured augmentation in order; identity when none."""
    import torch

    fns = []
    for i, spec in enumerate(specs):
        if len(spec) != 1:
            raise UsageError(f"augment[{i}]: expected one {{name: {{options}}}} entry, got {list(spec)}")
        (name, options), = spec.items()
        if name not in AUGMENTATIONS:
            raise UsageError(f"augment[{i}]: unknown augmentation '{name}'{suggest(name, set(AUGMENTATIONS))}; "
                             f"known: {', '.join(sorted(AUGMENTATIONS))}")
        try:
            fns.append(AUGMENTATIONS[name](**(options or {})))
        except TypeError as exc:
            raise UsageError(f"augment[{i}].{name}: {exc}") from None
    gen = torch.Generator().manual_seed(seed)

    def apply(x: Any) -> Any:
        for fn in fns:
            x = fn(x, gen)
        return x

    return apply
