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
from .packed import WeightOnlyLinear
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

    computes = "linear"

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
        # Per-input-channel divisor applied before the input quantizer (SmoothQuant); None = none.
        self.register_buffer("input_smoothing", None)

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

    def weight_only_form(
        self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scale_dtype: torch.dtype
    ) -> WeightOnlyLinear:
        """The packed `WeightOnlyLinear` holding these codes and this layer's bias (`quantpilot.nn.storage`).

        Example:
            >>> import torch
            >>> from quantpilot.nn.packed import weight_only_spec
            >>> layer = QuantLinear(torch.randn(2, 4), None, weight_spec=weight_only_spec(8, None))
            >>> layer.weight_only_form(torch.zeros(2, 4), torch.ones(2), torch.zeros(2), torch.float16).out_features
            2
        """
        return WeightOnlyLinear.from_codes(codes, scale, zero_point, self.weight_spec, self.bias, scale_dtype)

    def smooth(self, factors: torch.Tensor) -> None:
        """Move per-input-channel scale from the activation into the weight: `x / s`, `W * s`.

        The float product is unchanged (`(x / s) @ (W * s).T == x @ W.T`); what changes is which
        side carries the outlier channels, so both quantize with less error (SmoothQuant).
        Factors compose if called twice. Only before `freeze`, while the weight is float.

        Example:
            >>> import torch
            >>> layer = QuantLinear(torch.randn(3, 4), None, weight_spec=None)
            >>> x = torch.randn(2, 4); before = layer(x)
            >>> layer.smooth(torch.tensor([1.0, 2.0, 4.0, 0.5]))
            >>> torch.allclose(layer(x), before, atol=1e-6)
            True
        """
        if self.is_frozen:
            raise ValueError("smooth() changes the float weight; call it before quantpilot.freeze")
        factors = torch.as_tensor(factors, dtype=torch.float32)
        if factors.shape != (self.in_features,) or not bool((factors > 0).all() and torch.isfinite(factors).all()):
            raise ValueError(f"smoothing factors must be {self.in_features} positive finite values")
        with torch.no_grad():
            self.weight.mul_(factors.to(self.weight.dtype))
        previous = self.input_smoothing
        self.input_smoothing = factors if previous is None else previous * factors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_smoothing is not None:
            x = x / self.input_smoothing.to(x.dtype)
        x = self.input_quantizer(x)
        return F.linear(x, self.quantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._weight_repr()}"
