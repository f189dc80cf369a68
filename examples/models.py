"""Models defined in the project (torchvision does not import beside torch 2.13 here)."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convs with BN and a residual add (1×1 projection when shapes change)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class DigitsResNet(nn.Module):
    """A small residual CNN for 1×8×8 digit images (~25k parameters)."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2015) for 3×224×224 ImageNet-shaped inputs, 1000 classes."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class SqueezeExcite(nn.Module):
    """MobileNetV3's squeeze-and-excite: global pool, 1×1 reduce (ReLU), 1×1 expand, hard-sigmoid gate."""

    def __init__(self, channels: int, reduce: int = 4):
        super().__init__()
        hidden = max(8, channels // reduce)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class Bneck(nn.Module):
    """MobileNetV3 bottleneck: 1×1 expand, k×k depthwise, optional squeeze-excite, 1×1 project; residual add
    when shapes allow. `act` is ReLU or hardswish, as in the paper's table."""

    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int, se: bool, act: type[nn.Module]):
        super().__init__()
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            act(),
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            act(),
            *([SqueezeExcite(hidden)] if se else []),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class InvertedResidual(Bneck):
    """MobileNetV2 block: 1×1 expand, 3×3 depthwise, 1×1 project with ReLU6; residual add when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__(cin, cin * expand, cout, 3, stride, False, nn.ReLU6)


class DigitsMobileNet(nn.Module):
    """A MobileNetV2-style depthwise-separable network for 1×8×8 digits."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(inplace=True)
        )
        self.blocks = nn.Sequential(
            InvertedResidual(width, width, 1, 4),
            InvertedResidual(width, 2 * width, 2, 4),
            InvertedResidual(2 * width, 2 * width, 1, 4),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class DigitsConcatNet(nn.Module):
    """Two parallel branches joined by channel concat (Inception/DenseNet-style), for 1×8×8 digits."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.branch3 = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.branch1 = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(3 * width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = self.mix(torch.cat([s, self.branch3(s), self.branch1(s)], dim=1))
        return self.fc(torch.flatten(self.pool(y), 1))


class DigitsMobileNetV3(nn.Module):
    """A MobileNetV3-style network for 1×8×8 digits: hardswish stem, bottlenecks with depthwise convs and
    squeeze-excite, a side branch from the 4×4 features concatenated before the head, hardswish classifier."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        hs, relu = nn.Hardswish, nn.ReLU
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), hs())
        self.stage1 = nn.Sequential(
            Bneck(width, 2 * width, width, 3, 1, True, relu),
            Bneck(width, 4 * width, 24, 3, 2, False, relu),
        )
        self.stage2 = nn.Sequential(
            Bneck(24, 72, 24, 5, 1, True, hs),
            Bneck(24, 96, 40, 3, 1, True, hs),
        )
        self.branch = nn.Sequential(  # a cheap depthwise path beside stage2, joined by concat
            nn.Conv2d(24, 24, 3, 1, 1, groups=24, bias=False),
            nn.BatchNorm2d(24),
            hs(),
            nn.Conv2d(24, 24, 1, bias=False),
            nn.BatchNorm2d(24),
            hs(),
        )
        self.head = nn.Sequential(nn.Conv2d(40 + 24, 128, 1, bias=False), nn.BatchNorm2d(128), hs())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(128, 128), hs(), nn.Dropout(0.2), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stage1(self.stem(x))
        y = self.head(torch.cat([self.stage2(s), self.branch(s)], dim=1))
        return self.classifier(torch.flatten(self.pool(y), 1))


class MobileNetV3Small(nn.Module):
    """MobileNetV3-Small (Howard et al. 2019, table 2) for 3×224×224 ImageNet-shaped inputs, 1000 classes. Its
    global pool is `x.mean((2, 3))`, as timm writes it: before channels-last lowering, TFLite got that as a
    TRANSPOSE to NCHW and a MEAN over W and C, which Arm's Ethos-U cannot run (benchmarks/npu_placement.py)."""

    # kernel, expanded channels, out channels, squeeze-excite, activation, stride
    BLOCKS = (
        (3, 16, 16, True, nn.ReLU, 2),
        (3, 72, 24, False, nn.ReLU, 2),
        (3, 88, 24, False, nn.ReLU, 1),
        (5, 96, 40, True, nn.Hardswish, 2),
        (5, 240, 40, True, nn.Hardswish, 1),
        (5, 240, 40, True, nn.Hardswish, 1),
        (5, 120, 48, True, nn.Hardswish, 1),
        (5, 144, 48, True, nn.Hardswish, 1),
        (5, 288, 96, True, nn.Hardswish, 2),
        (5, 576, 96, True, nn.Hardswish, 1),
        (5, 576, 96, True, nn.Hardswish, 1),
    )

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        blocks, cin = [], 16
        for kernel, hidden, cout, se, act, stride in self.BLOCKS:
            blocks.append(Bneck(cin, hidden, cout, kernel, stride, se, act))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(96, 576, 1, bias=False), nn.BatchNorm2d(576), nn.Hardswish())
        self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(self.stem(x))).mean((2, 3)))
