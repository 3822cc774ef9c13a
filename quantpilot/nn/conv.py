"""`QuantConv1d/2d/3d`: convolutions with quantized weight (per output channel) and input.

Example:
    >>> import torch
    >>> conv = QuantConv2d.from_float(torch.nn.Conv2d(3, 8, 3, padding=1))
    >>> conv(torch.randn(1, 3, 16, 16)).shape
    torch.Size([1, 8, 16, 16])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..spec import PerChannel, PerTensor
from .quant_module import QuantModule

__all__ = ["QuantConv1d", "QuantConv2d", "QuantConv3d"]


class _QuantConvNd(QuantModule):
    _float_type: type[nn.Module] = nn.Module
    _conv = staticmethod(F.conv2d)

    def __init__(self, conv: nn.Module, **quant) -> None:
        super().__init__()
        if type(conv) is not self._float_type:
            raise TypeError(f"{type(self).__name__} wraps {self._float_type.__name__}, got {type(conv).__name__}")
        spec = quant.get("weight_spec")
        if spec is not None and not isinstance(spec.granularity, PerTensor | PerChannel):
            raise ValueError(
                f"convolution weights are quantized per tensor or per output channel, not {spec.granularity}; "
                "use PerChannel(0) for convolutions"
            )
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, attr, getattr(conv, attr))
        self.padding_mode = conv.padding_mode
        self._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice
        self._setup_quantization(conv.weight, **quant)
        self.bias = conv.bias

    @classmethod
    def from_float(cls, module: nn.Module, **quant):
        """Wrap a float convolution of the matching dimensionality, sharing its tensors."""
        return cls(module, **quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quantizer(x)
        weight = self.quantized_weight(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        padding = self.padding
        if self.padding_mode != "zeros":
            # Same as torch's ConvNd: explicit padding first, then a convolution without padding.
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return self._conv(x, weight, bias, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"groups={self.groups}, {self._weight_repr()}"
        )


class QuantConv1d(_QuantConvNd):
    """Quantized `nn.Conv1d`.

    Example:
        >>> import torch
        >>> QuantConv1d.from_float(torch.nn.Conv1d(2, 4, 3))(torch.randn(1, 2, 9)).shape
        torch.Size([1, 4, 7])
    """

    _float_type = nn.Conv1d
    _conv = staticmethod(F.conv1d)


class QuantConv2d(_QuantConvNd):
    """Quantized `nn.Conv2d`.

    Example:
        >>> import torch
        >>> QuantConv2d.from_float(torch.nn.Conv2d(2, 4, 3))(torch.randn(1, 2, 5, 5)).shape
        torch.Size([1, 4, 3, 3])
    """

    _float_type = nn.Conv2d
    _conv = staticmethod(F.conv2d)


class QuantConv3d(_QuantConvNd):
    """Quantized `nn.Conv3d`.

    Example:
        >>> import torch
        >>> QuantConv3d.from_float(torch.nn.Conv3d(1, 2, 3))(torch.randn(1, 1, 4, 4, 4)).shape
        torch.Size([1, 2, 2, 2, 2])
    """

    _float_type = nn.Conv3d
    _conv = staticmethod(F.conv3d)
