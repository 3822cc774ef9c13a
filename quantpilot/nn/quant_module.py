"""`QuantModule`: what every quantized layer shares — a quantized weight and an input quantizer.

Before `freeze` the float weight is a Parameter and is fake-quantized on the fly (calibration runs
the float model untouched). `freeze` stores the weight as integer codes plus scale / zero point
buffers and drops the float copy: a module *is* frozen exactly when `weight_int` exists.

Example:
    >>> import torch
    >>> from quantpilot.nn import QuantLinear
    >>> layer = QuantLinear.from_float(torch.nn.Linear(4, 2))
    >>> layer.is_frozen
    False
    >>> layer.freeze(); layer.is_frozen, layer.weight_int.dtype
    (True, torch.int8)
"""

from __future__ import annotations

import torch
from torch import nn

from ..primitives import dequantize, fake_quantize, quantize
from ..spec import PerChannel, QuantSpec
from .tensor_quantizer import CalibratorConfig, TensorQuantizer

__all__ = ["QuantModule", "DEFAULT_WEIGHT_SPEC"]

DEFAULT_WEIGHT_SPEC = QuantSpec("int8", symmetric=True, narrow_range=True, granularity=PerChannel(0))


class QuantModule(nn.Module):
    """Base class of quantized layers; subclasses implement `forward` with `self.quantized_weight(dtype)`.

    Example:
        >>> issubclass(__import__("quantpilot.nn", fromlist=["QuantConv2d"]).QuantConv2d, QuantModule)
        True
    """

    # Multiplies the gradient of a learned weight scale (LSQ's gradient scale; set by `quantpilot.qat.prepare`).
    weight_scale_grad_factor: float = 1.0

    def _setup_quantization(
        self,
        weight: torch.Tensor,
        weight_spec: QuantSpec | None = DEFAULT_WEIGHT_SPEC,
        weight_calibrator: CalibratorConfig | None = None,
        input_quantizer: TensorQuantizer | None = None,
    ) -> None:
        if weight_spec is not None and not isinstance(weight_spec, QuantSpec):
            raise TypeError(f"weight_spec must be a QuantSpec or None, got {type(weight_spec).__name__}")
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)
        self.weight_spec = weight_spec
        self.weight_calibrator = weight_calibrator or CalibratorConfig("minmax")
        self.input_quantizer = input_quantizer if input_quantizer is not None else TensorQuantizer(None)

    @property
    def is_frozen(self) -> bool:
        """True once the weight is stored as integer codes."""
        return self._buffers.get("weight_int") is not None

    def weight_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point of the float weight under the layer's weight calibrator.

        Example:
            >>> import torch
            >>> from quantpilot.nn import QuantLinear
            >>> QuantLinear.from_float(torch.nn.Linear(3, 5)).weight_qparams()[0].shape
            torch.Size([5])
        """
        if self.weight_spec is None:
            raise ValueError("this layer keeps its weight in float (weight_spec is None): it has no weight qparams")
        if self.is_frozen or self._parameters.get("weight_scale") is not None:
            # Stored codes' qparams, or a scale learned by QAT (`quantpilot.qat.prepare(learn_ranges=True)`).
            return self.weight_scale, self.weight_zero_point
        calibrator = self.weight_calibrator.build(self.weight_spec)
        calibrator.collect(self.weight.detach())
        return calibrator.qparams()

    def quantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight as the quantized model sees it, in `dtype`.

        Frozen: the stored codes dequantized. Calibrating: the float weight (calibration observes
        the float model). Otherwise: the float weight fake-quantized, differentiable for QAT.
        """
        if self.weight_spec is None:
            return self.weight.to(dtype)
        if self.is_frozen:
            return dequantize(self.weight_int, self.weight_scale, self.weight_zero_point, self.weight_spec, dtype)
        if self.input_quantizer.collecting:
            return self.weight.to(dtype)
        scale, zero_point = self.weight_qparams()
        return fake_quantize(self.weight, scale, zero_point, self.weight_spec, self.weight_scale_grad_factor).to(dtype)

    def freeze(self) -> None:
        """Fix the input range from calibration and store the weight as integers (idempotent)."""
        self.input_quantizer.fix_qparams()
        q = self.input_quantizer
        if isinstance(q.scale, nn.Parameter):
            # A scale learned by QAT: a frozen model holds plain buffers, as after PTQ.
            scale = q.scale.detach().clone()
            del q.scale
            q.register_buffer("scale", scale)
        self.store_weight_as_integers()

    def store_weight_as_integers(self) -> None:
        """Replace the float weight by its codes and qparams (idempotent; no-op for float weights)."""
        if self.weight_spec is None or self.is_frozen:
            return
        scale, zero_point = (t.detach().clone() for t in self.weight_qparams())
        codes = quantize(self.weight.detach(), scale, zero_point, self.weight_spec)
        del self.weight
        if "weight_scale" in self._parameters:
            del self.weight_scale  # learned by QAT; stored below as a buffer like any frozen scale
        self.register_buffer("weight_int", codes)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", zero_point)

    def _weight_repr(self) -> str:
        if self.weight_spec is None:
            return "weight=float"
        state = "frozen" if self.is_frozen else "fake-quant"
        return f"weight={self.weight_spec.dtype.value}/{type(self.weight_spec.granularity).__name__} ({state})"
