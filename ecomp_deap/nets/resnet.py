"""The default residual parent: a ResNet-20-style network for small images.

Three stages of :class:`BasicBlock` s (16, 32 and 64 channels by default, ``blocks`` per
stage: 3 is ResNet-20), the first block of each later stage halving the resolution with
a 1x1 projection shortcut, the others with identity shortcuts; global average pooling and
one Linear classifier. A graph parent (:mod:`ecomp_deap.nets.graph`): the residual adds
couple each stage's block outputs into one channel group.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """conv 3x3 - BatchNorm - ReLU - conv 3x3 - BatchNorm, plus the shortcut (identity, or a
    1x1 convolution with BatchNorm when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); (N, C_in, H, W) -> (N, C, H/s, W/s)."""
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """``stem`` (conv 3x3, stride ``stem_stride`` - BatchNorm - ReLU), ``stage1`` ...
    ``stageN`` of ``blocks`` :class:`BasicBlock` s at ``channels``, ``pool`` (global
    average), ``fc``. Input (N, in_channels, H, W); output (N, n_classes)."""

    def __init__(self, channels=(16, 32, 64), blocks: int = 3, in_channels: int = 1, n_classes: int = 10,
                 stem_stride: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, stride=stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU())
        c = channels[0]
        for i, width in enumerate(channels, start=1):
            stage = [BasicBlock(c, width, stride=1 if i == 1 else 2)] + [BasicBlock(width, width)
                                                                           for _ in range(blocks - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*stage))
            c = width
        self.n_stages = len(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, classes) of images (N, 1, H, W)."""
        h = self.stem(x)
        for i in range(1, self.n_stages + 1):
            h = getattr(self, f"stage{i}")(h)
        return self.fc(torch.flatten(self.pool(h), 1))
