"""TinyMobile (MobileNetV2 in miniature) as a newcomer's model file, its weights trained on the digits (~1 s),
and the folder a newcomer brings: the one-line start and init tests share it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write

NET = """
import torch
from torch import nn


class TinyMobile(nn.Module):
    \"\"\"An inverted residual block (expand, depthwise, project) and a classifier: MobileNetV2 in miniature.\"\"\"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = nn.Sequential(
            nn.Conv2d(8, 16, 1), nn.ReLU6(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),
            nn.Conv2d(16, 8, 1),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.block(x))


def make():
    return TinyMobile().eval()
"""


def train_tiny(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """TinyMobile trained on the digits' train split (~1 s): the gate refuses an untrained model's reference
    (chance level), as it would a newcomer's."""
    import torch
    from safetensors.torch import save

    from deployc.data.sources import digits_arrays

    folder = write(tmp_path_factory.mktemp("tiny") / "tiny.py", NET).parent
    namespace: dict = {}
    exec(compile(NET, str(folder / "tiny.py"), "exec"), namespace)
    model = namespace["make"]().train()
    x, y = (torch.from_numpy(a) for a in digits_arrays("train"))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(300):
        idx = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return save({k: v.contiguous() for k, v in model.eval().state_dict().items()})


def tiny_project(folder: Path, weights: bytes, samples: int) -> Path:
    """nets/tiny.py (+ its trained weights) and digits.npz: what a newcomer brings."""
    from deployc.data.sources import digits_arrays

    write(folder / "nets" / "tiny.py", NET)
    (folder / "nets" / "tiny.safetensors").write_bytes(weights)
    x, y = digits_arrays("test")
    np.savez(folder / "digits.npz", image=x[:samples], labels=y[:samples], calib_image=x[samples : samples + 64])
    return folder
