"""A quantization-hostile model: the trained digits CNN with one channel blown up 1000× between two
1×1 convs. The function is unchanged (the second conv undoes the first), but per-tensor int8 of the
tensor between them gives the other channels a step of ~25 units and rounds them to zero — the
outlier-channel trap that accuracy-aware tuning must fix by keeping those layers in float."""

from __future__ import annotations

import torch
from torch import nn

from deployc.examples.digits_cnn import pretrained
from deployc.examples.models import DigitsResNet

OUTLIER_SCALE = 1000.0


class HostileDigitsNet(nn.Module):
    """DigitsResNet with `spread` (channel 0 × OUTLIER_SCALE) and `squeeze` (÷ OUTLIER_SCALE) after the stem."""

    def __init__(self, base: DigitsResNet, scale: float = OUTLIER_SCALE):
        super().__init__()
        width = base.stem[0].out_channels
        gain = torch.ones(width)
        gain[0] = scale
        self.stem = base.stem
        self.spread = nn.Conv2d(width, width, 1, bias=False)
        self.squeeze = nn.Conv2d(width, width, 1, bias=False)
        with torch.no_grad():
            self.spread.weight.copy_(torch.diag(gain)[:, :, None, None])
            self.squeeze.weight.copy_(torch.diag(1 / gain)[:, :, None, None])
        self.layer1, self.layer2, self.pool, self.fc = base.layer1, base.layer2, base.pool, base.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(self.spread(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def hostile() -> HostileDigitsNet:
    """The factory quant_tune.yaml names: the cached demo model made quantization-hostile."""
    return HostileDigitsNet(pretrained()).eval()
