"""The embedded demo model (DigitsResNet) and the MobileNetV3-style digits model, each trained on
scikit-learn's digits once, then cached."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from deployc.data.sources import digits_arrays
from deployc.examples.models import DigitsMobileNetV3, DigitsResNet

EPOCHS = 25
SEED = 0


def cache_dir() -> Path:
    """$DEPLOYC_CACHE_DIR, else ~/.cache/deployc."""
    return Path(os.environ.get("DEPLOYC_CACHE_DIR") or Path.home() / ".cache" / "deployc")


def _cache_key() -> str:
    # retrain when this file, the model code or torch changes
    sources = [
        Path(__file__).read_bytes(),
        (Path(__file__).parent / "models.py").read_bytes(),
        torch.__version__.encode(),
    ]
    return hashlib.sha256(b"\0".join(sources)).hexdigest()[:16]


def train(epochs: int = EPOCHS, seed: int = SEED, make: Callable[[], nn.Module] = DigitsResNet) -> nn.Module:
    """Deterministic training: fixed seed, fixed shuffling, Adam with cosine decay."""
    torch.manual_seed(seed)
    x, y = (torch.from_numpy(a) for a in digits_arrays("train"))
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def pretrained() -> DigitsResNet:
    """The trained demo model, from the cache when present (safetensors), else trained now (~10 s)."""
    return _cached("digits_resnet", DigitsResNet)


def mobilenetv3() -> DigitsMobileNetV3:
    """The trained MobileNetV3-style digits model (depthwise, squeeze-excite, hardswish, concat), cached likewise."""
    return _cached("digits_mobilenetv3", DigitsMobileNetV3)


def _cached(name: str, make: Callable[[], nn.Module]) -> nn.Module:
    """Read and written through the I/O boundary: a cached file that is not a regular file, or is damaged, is
    retrained over (atomically, never through a link planted there)."""
    from safetensors import SafetensorError
    from safetensors.torch import load, save

    from deployc.errors import UsageError
    from deployc.storage.files import read_bytes, write_bytes_atomic

    path = cache_dir() / f"{name}-{_cache_key()}.safetensors"
    model = make()
    try:
        model.load_state_dict(load(read_bytes(path, "demo model cache", 64 << 20)))
        return model.eval()
    except (UsageError, OSError, SafetensorError, RuntimeError, ValueError, KeyError):
        pass  # missing, not a regular file, damaged, or another model's: train it again
    print(f"training {name} on digits (once; cached in {path.parent})", file=sys.stderr)
    model = train(make=make)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model


def accuracy(model: nn.Module, split: str = "test") -> float:
    x, y = digits_arrays(split)
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


if __name__ == "__main__":
    m = pretrained()
    print(f"test top-1 {accuracy(m):.4f}, params {sum(p.numel() for p in m.parameters())}")
