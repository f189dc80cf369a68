"""Training-time data augmentation, configured as a list of {name: {options}} and applied per batch.

Each augmentation acts on one kind of input and leaves the others alone: images are float (N, C, H, W),
time series float (N, T) or (N, C, T), token sequences integer (N, T). Every augmentation also takes
`inputs: [name, ...]` to restrict it to some model inputs (default: every input of its kind).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from deployc.core.config import suggest
from deployc.errors import UsageError

Augment = Callable[[Any, Any], Any]  # (batch tensor, torch.Generator) -> batch tensor


def _is_image(x: Any) -> bool:
    return x.ndim == 4 and x.is_floating_point()


def _is_series(x: Any) -> bool:
    return x.ndim in (2, 3) and x.is_floating_point()


def _is_tokens(x: Any) -> bool:
    return x.ndim == 2 and not x.is_floating_point() and x.dtype.is_signed


def _uniform(n: int, low: float, high: float, gen: Any) -> Any:
    import torch

    return low + (high - low) * torch.rand(n, generator=gen)


# ------------------------------------------------------------------------------------------------- images


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


def _affine(degrees: float = 10.0, scale: tuple[float, float] = (0.9, 1.1)) -> Augment:
    """Per-image random rotation (± degrees) and zoom (scale range), bilinear, zero-filled."""
    import torch
    import torch.nn.functional as F

    lo, hi = scale

    def apply(x: Any, gen: Any) -> Any:
        if not _is_image(x):
            return x
        n = len(x)
        angle = _uniform(n, -degrees, degrees, gen) * math.pi / 180
        s = 1 / _uniform(n, lo, hi, gen)  # the grid maps output to input: zoom in = sample a smaller area
        cos, sin = torch.cos(angle) * s, torch.sin(angle) * s
        theta = torch.stack(
            [torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1
        )
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    return apply


def _rotate(degrees: float = 10.0) -> Augment:
    """Per-image random rotation by up to ± degrees."""
    return _affine(degrees=degrees, scale=(1.0, 1.0))


def _scale(low: float = 0.9, high: float = 1.1) -> Augment:
    """Per-image random zoom by a factor in [low, high]."""
    return _affine(degrees=0.0, scale=(low, high))


def _color_jitter(brightness: float = 0.2, contrast: float = 0.2) -> Augment:
    """Per-image brightness (additive, ± brightness × range) and contrast (× [1 ± contrast] around the mean)."""

    def apply(x: Any, gen: Any) -> Any:
        if not _is_image(x):
            return x
        n = len(x)
        span = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).clamp_min(1e-6).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        c = _uniform(n, 1 - contrast, 1 + contrast, gen).view(n, 1, 1, 1).to(x.dtype)
        b = _uniform(n, -brightness, brightness, gen).view(n, 1, 1, 1).to(x.dtype)
        return (x - mean) * c + mean + b * span

    return apply


# -------------------------------------------------------------------------------------------- time series


def _noise(std: float = 0.05) -> Augment:
    """Additive Gaussian noise on float inputs (images or series)."""
    import torch

    def apply(x: Any, gen: Any) -> Any:
        return x + std * torch.randn(x.shape, generator=gen) if x.is_floating_point() else x

    return apply


def _jitter(std: float = 0.03) -> Augment:
    """Additive Gaussian noise on time series only (Um et al. 2017)."""
    import torch

    def apply(x: Any, gen: Any) -> Any:
        return x + std * torch.randn(x.shape, generator=gen, dtype=x.dtype) if _is_series(x) else x

    return apply


def _magnitude_scale(std: float = 0.1) -> Augment:
    """Multiply each series (each channel) by a random factor ~ N(1, std)."""
    import torch

    def apply(x: Any, gen: Any) -> Any:
        if not _is_series(x):
            return x
        shape = x.shape[:-1] + (1,)
        return x * (1 + std * torch.randn(shape, generator=gen, dtype=x.dtype))

    return apply


def _time_warp(strength: float = 0.2, knots: int = 4) -> Augment:
    """Smoothly speed up / slow down time: resample each series along a random monotone warp."""
    import torch
    import torch.nn.functional as F

    def apply(x: Any, gen: Any) -> Any:
        if not _is_series(x):
            return x
        series = x if x.ndim == 3 else x[:, None]
        n, _, t = series.shape
        speed = 1 + strength * (2 * torch.rand(n, 1, knots + 1, generator=gen) - 1)  # local speeds at the knots
        speed = F.interpolate(speed, size=t, mode="linear", align_corners=True)[:, 0]
        pos = torch.cumsum(speed, 1)
        pos = (pos - pos[:, :1]) / (pos[:, -1:] - pos[:, :1]).clamp_min(1e-6)  # 0 → 1, monotone
        grid = torch.stack([pos * 2 - 1, torch.zeros_like(pos)], -1)[:, None]  # (N, 1, T, 2) for a 1-pixel-high image
        out = F.grid_sample(
            series[:, :, None].to(torch.float32),
            grid.to(torch.float32),
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )[:, :, 0].to(x.dtype)
        return out if x.ndim == 3 else out[:, 0]

    return apply


# ---------------------------------------------------------------------------------------- token sequences


def _token_delete(p: float = 0.1, pad_id: int = 0, keep_first: int = 1) -> Augment:
    """Delete each token with probability p (never the first `keep_first`, never padding); close the gaps, pad the end."""
    import torch

    def apply(x: Any, gen: Any) -> Any:
        if not _is_tokens(x):
            return x
        drop = (torch.rand(x.shape, generator=gen) < p) & (x != pad_id)
        drop[:, :keep_first] = False
        order = torch.argsort(drop.to(torch.int8), dim=1, stable=True)  # kept tokens first, in order
        out = torch.gather(x, 1, order)
        kept = (~drop).sum(1, keepdim=True)
        return out.masked_fill(torch.arange(x.shape[1])[None] >= kept, pad_id)

    return apply


def _token_swap(p: float = 0.1, pad_id: int = 0, keep_first: int = 1) -> Augment:
    """Swap each token with its right neighbour with probability p (padding and the first tokens stay)."""
    import torch

    def apply(x: Any, gen: Any) -> Any:
        if not _is_tokens(x) or x.shape[1] < 2:
            return x
        out = x.clone()
        swap = torch.rand(x.shape[0], x.shape[1] - 1, generator=gen) < p
        swap &= (x[:, :-1] != pad_id) & (x[:, 1:] != pad_id)
        swap[:, :keep_first] = False
        swap[:, 1:] &= ~swap[:, :-1]  # no token takes part in two swaps
        rows, cols = swap.nonzero(as_tuple=True)
        out[rows, cols], out[rows, cols + 1] = x[rows, cols + 1], x[rows, cols]
        return out

    return apply


AUGMENTATIONS: dict[str, Callable[..., Augment]] = {
    "shift": _shift,
    "flip": _flip,
    "rotate": _rotate,
    "scale": _scale,
    "affine": _affine,
    "color_jitter": _color_jitter,
    "noise": _noise,
    "jitter": _jitter,
    "magnitude_scale": _magnitude_scale,
    "time_warp": _time_warp,
    "token_delete": _token_delete,
    "token_swap": _token_swap,
}


def _parse(spec: dict[str, Any], i: int) -> tuple[str, dict[str, Any], list[str] | None]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UsageError(f"augment[{i}]: expected one {{name: {{options}}}} entry, got {spec!r}")
    ((name, options),) = spec.items()
    if name not in AUGMENTATIONS:
        raise UsageError(
            f"augment[{i}]: unknown augmentation '{name}'{suggest(name, set(AUGMENTATIONS))}; "
            f"known: {', '.join(sorted(AUGMENTATIONS))}"
        )
    options = dict(options or {})
    inputs = options.pop("inputs", None)
    try:
        inspect.signature(AUGMENTATIONS[name]).bind(**options)
    except TypeError as exc:
        known = ", ".join(inspect.signature(AUGMENTATIONS[name]).parameters) or "none"
        raise UsageError(f"augment[{i}].{name}: {exc} (options: {known}, inputs)") from None
    return name, options, inputs


def check_augment(specs: list[dict[str, Any]]) -> None:
    """Names and option keys of every augmentation, checked without importing torch (config time)."""
    for i, spec in enumerate(specs):
        _parse(spec, i)


def build_augmenter(specs: list[dict[str, Any]], seed: int) -> Callable[..., Any]:
    """One callable `(batch, input_name=None) -> batch` applying the augmentations in order; identity when none."""
    import torch

    fns = []
    for i, spec in enumerate(specs):
        name, options, inputs = _parse(spec, i)
        fns.append((AUGMENTATIONS[name](**options), None if inputs is None else set(inputs)))
    gen = torch.Generator().manual_seed(seed)

    def apply(x: Any, input_name: str | None = None) -> Any:
        for fn, only in fns:
            if only is None or input_name is None or input_name in only:
                x = fn(x, gen)
        return x

    return apply
