"""The built-in student networks as module-level classes (so ``torch.save(student)`` can pickle them)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InvertedResidual", "MobileStudent"]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; a residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hid = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        self.body = nn.Sequential(
            nn.Conv2d(c_in, hid, 1, bias=False),
            nn.BatchNorm2d(hid),
            nn.ReLU6(),
            nn.Conv2d(hid, hid, 3, stride=stride, padding=1, groups=hid, bias=False),
            nn.BatchNorm2d(hid),
            nn.ReLU6(),
            nn.Conv2d(hid, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.use_res else y


class MobileStudent(nn.Sequential):
    """MobileNetV2-style CNN: a 3x3 stem, two inverted residual blocks (the second strided), a pooled head."""

    def __init__(self, in_ch: int, n_out: int, width: int, expand: int = 4) -> None:
        half = max(4, width // 2)
        super().__init__(
            nn.Conv2d(in_ch, half, 3, padding=1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU6(),
            InvertedResidual(half, half, 1, expand),
            InvertedResidual(half, width, 2, expand),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, n_out),
        )
