"""A ResNet-style classifier (basic blocks: Conv-BN-ReLU-Conv-BN + shortcut, then ReLU), sized by arguments.

It exists to exercise the patterns that matter for quantizing CNNs: Conv followed by BatchNorm (to fold),
and a residual Add whose two inputs come from differently scaled branches (a downsampling block adds a
1x1 Conv-BN projection to the main branch). The network traces with `torch.fx`, so graph passes see
every Conv, BN and Add.

Example:
    >>> import torch
    >>> net = ResNet(in_channels=1, num_classes=10, widths=(8, 16), blocks_per_stage=1).eval()
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "ResNet"]


class BasicBlock(nn.Module):
    """`relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`; the shortcut is a 1x1 Conv-BN when the shape changes.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the first conv (2 halves the resolution).

    Example:
        >>> import torch
        >>> BasicBlock(4, 8, stride=2)(torch.zeros(1, 4, 8, 8)).shape
        torch.Size([1, 8, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem Conv-BN-ReLU, stages of `BasicBlock`s (each stage after the first halves the resolution),
    global average pooling and a Linear head.

    Args:
        in_channels: image channels (1 for grey, 3 for RGB).
        num_classes: outputs of the head.
        widths: channels of each stage; the stem has `widths[0]`.
        blocks_per_stage: basic blocks per stage.

    Raises:
        ValueError: a size is not a positive integer or `widths` is empty.

    Example:
        >>> sum(isinstance(m, BasicBlock) for m in ResNet(widths=(8, 16, 32), blocks_per_stage=2).modules())
        6
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 2,
    ) -> None:
        super().__init__()
        sizes = {"in_channels": in_channels, "num_classes": num_classes, "blocks_per_stage": blocks_per_stage}
        for key, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        widths = tuple(widths)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))
