"""`QuantLinear`: a Linear layer (or Hugging Face GPT-2 `Conv1D`) with quantized weight and input.

Example:
    >>> import torch
    >>> layer = QuantLinear.from_float(torch.nn.Linear(8, 4))
    >>> layer(torch.randn(2, 8)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..spec import QuantSpec
from .quant_module import DEFAULT_WEIGHT_SPEC, QuantModule
from .tensor_quantizer import CalibratorConfig, TensorQuantizer

__all__ = ["QuantLinear"]


class QuantLinear(QuantModule):
    """`y = x_q @ W_q.T + b` with the bias kept in float.

    Args:
        weight: `(out_features, in_features)` float weight.
        bias: `(out_features,)` or None.
        weight_spec, weight_calibrator: how the weight is quantized (None keeps it float).
        input_quantizer: quantizer of the layer input (None: the input stays float, e.g. W8A16).

    Example:
        >>> import torch
        >>> QuantLinear(torch.randn(4, 8), None).out_features
        4
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        weight_spec: QuantSpec | None = DEFAULT_WEIGHT_SPEC,
        weight_calibrator: CalibratorConfig | None = None,
        input_quantizer: TensorQuantizer | None = None,
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"a Linear weight is 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self._setup_quantization(weight, weight_spec, weight_calibrator, input_quantizer)
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias)

    @classmethod
    def from_float(cls, module: nn.Module, **quant) -> QuantLinear:
        """Wrap an `nn.Linear` (sharing its tensors) or a GPT-2 `Conv1D` (weight transposed).

        Example:
            >>> import torch
            >>> QuantLinear.from_float(torch.nn.Linear(3, 2), weight_spec=None).weight.shape
            torch.Size([2, 3])
        """
        if isinstance(module, nn.Linear):
            return cls(module.weight, module.bias, **quant)
        if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
            # transformers' Conv1D computes x @ W + b with W shaped (in, out): a Linear with W.T.
            return cls(nn.Parameter(module.weight.detach().t().contiguous()), module.bias, **quant)
        raise TypeError(f"QuantLinear wraps nn.Linear or transformers' Conv1D, got {type(module).__name__}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quantizer(x)
        return F.linear(x, self.quantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._weight_repr()}"
