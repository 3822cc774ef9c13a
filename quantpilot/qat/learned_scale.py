"""Learned step sizes (LSQ, Esser et al., ICLR 2020) for activation and weight quantizers.

LSQ trains each quantizer's scale by gradient descent alongside the weights. Its gradient sums
over every value the scale quantizes, so LSQ multiplies it by ``1 / sqrt(N * qmax)`` (``N``: the
values one scale covers per sample) to keep the scale's steps in proportion to the weights'.
For a weight that count is fixed; for an activation it is only known from the data, which is why
activation quantizers become `LearnedScaleQuantizer`, computing the factor on every forward.

Example:
    >>> round(lsq_grad_factor(1024, 127), 6)
    0.002773
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import QuantModule, TensorQuantizer
from ..primitives import fake_quantize

__all__ = ["lsq_grad_factor", "LearnedScaleQuantizer", "learn_activation_scale", "learn_weight_scale"]


def lsq_grad_factor(values_per_scale: int, qmax: int) -> float:
    """LSQ's gradient scale ``1 / sqrt(values_per_scale * qmax)``.

    Args:
        values_per_scale: how many values one scale quantizes (per sample, for activations).
        qmax: the largest positive code of the scheme (127 for int8).

    Example:
        >>> lsq_grad_factor(1, 4)
        0.5
    """
    if values_per_scale < 1 or qmax < 1:
        raise ValueError(f"values_per_scale and qmax must be positive, got {values_per_scale} and {qmax}")
    return 1.0 / math.sqrt(values_per_scale * qmax)


def _qmax(quantizer_spec) -> int:
    # fp8 has no integer grid; its largest value plays qmax's role in LSQ's normalisation.
    return int(quantizer_spec.fp_max) if quantizer_spec.dtype.is_float else max(1, quantizer_spec.qmax)


class LearnedScaleQuantizer(TensorQuantizer):
    """A static `TensorQuantizer` whose scale is an `nn.Parameter`, trained with LSQ's gradient.

    Built by `learn_activation_scale` from a quantizer with a fixed range; behaves exactly like
    it in the forward pass (and in export), and scales the scale's gradient per batch.

    Example:
        >>> from quantpilot import QuantSpec
        >>> tq = TensorQuantizer(QuantSpec("int8"))
        >>> tq.scale, tq.zero_point = torch.tensor(0.1), torch.tensor(0)
        >>> learned = learn_activation_scale(tq)
        >>> x = torch.tensor([[0.5, 20.0]])
        >>> learned(x).sum().backward(); learned.scale.grad.item() != 0
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.collecting or not isinstance(self.scale, nn.Parameter) or torch.onnx.is_in_onnx_export():
            return super().forward(x)
        per_sample = x.numel() // max(1, x.shape[0]) if x.dim() > 1 else x.numel()
        factor = lsq_grad_factor(max(1, per_sample // max(1, self.scale.numel())), _qmax(self.spec))
        return fake_quantize(x, self.scale, self.zero_point, self.spec, factor)


def learn_activation_scale(quantizer: TensorQuantizer) -> TensorQuantizer:
    """Make a static quantizer's fixed scale learnable (in place); others are returned unchanged.

    Args:
        quantizer: a quantizer whose range was fixed (`fix_qparams`).

    Returns:
        The same object, now a `LearnedScaleQuantizer` with ``scale`` an `nn.Parameter`.

    Example:
        >>> from quantpilot import QuantSpec
        >>> tq = TensorQuantizer(QuantSpec("int8"))
        >>> tq.scale, tq.zero_point = torch.tensor(0.1), torch.tensor(0)
        >>> type(learn_activation_scale(tq).scale).__name__
        'Parameter'
    """
    if not quantizer.needs_calibration:
        return quantizer
    if quantizer.scale is None:
        raise ValueError(f"'{quantizer.qualname or 'quantizer'}' has no fixed range to learn from: calibrate first")
    # The subclass adds behaviour only (no state), so switching the class keeps every attribute,
    # hook and buffer of the quantizer the model already holds.
    quantizer.__class__ = LearnedScaleQuantizer
    quantizer.scale = nn.Parameter(quantizer.scale.detach().clone().float())
    return quantizer


def learn_weight_scale(layer: QuantModule) -> QuantModule:
    """Give a layer a learnable weight scale, initialised from its weight calibrator (in place).

    Layers with a float weight, or already frozen, are returned unchanged.

    Example:
        >>> from quantpilot.nn import QuantLinear
        >>> layer = learn_weight_scale(QuantLinear.from_float(torch.nn.Linear(4, 3)))
        >>> layer.weight_scale.shape, layer.weight_scale.requires_grad
        (torch.Size([3]), True)
    """
    if layer.weight_spec is None or layer.is_frozen or isinstance(layer._parameters.get("weight_scale"), nn.Parameter):
        return layer
    scale, zero_point = layer.weight_qparams()
    layer.weight_scale = nn.Parameter(scale.detach().clone())
    layer.register_buffer("weight_zero_point", zero_point.detach().clone())
    layer.weight_scale_grad_factor = lsq_grad_factor(
        max(1, layer.weight.numel() // scale.numel()), _qmax(layer.weight_spec)
    )
    return layer
