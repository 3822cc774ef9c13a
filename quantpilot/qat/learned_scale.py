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
from ..primitives import choose_qparams, fake_quantize
from ..spec import PerChannel, PerTensor

__all__ = [
    "lsq_grad_factor",
    "LearnedScaleQuantizer",
    "learn_activation_scale",
    "learn_weight_scale",
    "mse_weight_qparams",
    "WEIGHT_INITS",
]

# Where a learned weight scale starts: the layer's weight calibrator (the PTQ model's scale) or
# the per-scale shrink of that range with the least squared rounding + clipping error.
WEIGHT_INITS = ("calibrator", "mse")
# Shrink factors of the calibrated range that "mse" tries, widest first (ties keep the wider range).
_MSE_RATIOS = torch.arange(100, 29, -1) / 100.0


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


def _error_per_scale(error: torch.Tensor, scale: torch.Tensor, granularity) -> torch.Tensor:
    """Sum `error` (shaped like the weight) over the values each scale entry covers."""
    if isinstance(granularity, PerTensor):
        return error.sum().reshape(scale.shape)
    if isinstance(granularity, PerChannel):
        error = error.movedim(granularity.axis, 0)
    # PerChannel: one row per channel; PerGroup: groups are contiguous runs along the last axis,
    # in the same order as the scale's entries.
    return error.reshape(scale.numel(), -1).sum(dim=1).reshape(scale.shape)


def mse_weight_qparams(layer: QuantModule) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (scale, zero point) with the least squared quantization error, per scale entry.

    Each channel's (or group's) calibrated range is shrunk by factors from 1.0 down to 0.3 in
    steps of 0.01, and the factor with the least ``sum((fake_quantize(w) - w) ** 2)`` is kept:
    clipping a few large weights buys a finer grid for all the others. At 8 bits the min/max
    range is usually already best; at 4 bits the error typically drops by a third or more.

    Args:
        layer: a quantized layer with a float, unfrozen weight.

    Returns:
        ``(scale, zero_point)`` shaped like ``layer.weight_qparams()``'s, never wider than it.

    Example:
        >>> from quantpilot import QuantSpec, PerChannel
        >>> from quantpilot.nn import QuantLinear
        >>> _ = torch.manual_seed(0)
        >>> spec = QuantSpec("int4", symmetric=True, narrow_range=True, granularity=PerChannel(0))
        >>> layer = QuantLinear.from_float(torch.nn.Linear(64, 8), weight_spec=spec)
        >>> scale, _ = mse_weight_qparams(layer)
        >>> bool((scale <= layer.weight_qparams()[0]).all()), bool((scale < layer.weight_qparams()[0]).any())
        (True, True)
    """
    if not isinstance(layer, QuantModule) or layer.weight_spec is None or layer.is_frozen:
        raise ValueError("mse_weight_qparams needs a quantized layer with a float (unfrozen) weight")
    spec = layer.weight_spec
    weight = layer.weight.detach().float()
    calibrator = layer.weight_calibrator.build(spec)
    calibrator.collect(weight)
    low, high = calibrator.compute_range()
    best_scale, best_zero_point, best_error = None, None, None
    for ratio in _MSE_RATIOS:
        scale, zero_point = choose_qparams(low * ratio, high * ratio, spec)
        squared = (fake_quantize(weight, scale, zero_point, spec) - weight) ** 2
        error = _error_per_scale(squared, scale, spec.granularity)
        if best_error is None:
            best_scale, best_zero_point, best_error = scale, zero_point, error
            continue
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_scale = torch.where(better, scale, best_scale)
        best_zero_point = torch.where(better, zero_point, best_zero_point)
    return best_scale, best_zero_point


def learn_weight_scale(layer: QuantModule, init: str = "calibrator") -> QuantModule:
    """Give a layer a learnable weight scale (in place).

    Layers with a float weight, or already frozen, are returned unchanged.

    Args:
        layer: a quantized layer.
        init: "calibrator" starts from the layer's weight calibrator (the PTQ model's scale);
            "mse" from `mse_weight_qparams`, the per-channel range with the least quantization
            error (better at 4 bits, where min/max wastes levels on a few large weights).

    Example:
        >>> from quantpilot.nn import QuantLinear
        >>> layer = learn_weight_scale(QuantLinear.from_float(torch.nn.Linear(4, 3)))
        >>> layer.weight_scale.shape, layer.weight_scale.requires_grad
        (torch.Size([3]), True)
    """
    if init not in WEIGHT_INITS:
        raise ValueError(f"init must be one of {', '.join(WEIGHT_INITS)}, got {init!r}")
    if layer.weight_spec is None or layer.is_frozen or isinstance(layer._parameters.get("weight_scale"), nn.Parameter):
        return layer
    scale, zero_point = mse_weight_qparams(layer) if init == "mse" else layer.weight_qparams()
    layer.weight_scale = nn.Parameter(scale.detach().clone())
    layer.register_buffer("weight_zero_point", zero_point.detach().clone())
    layer.weight_scale_grad_factor = lsq_grad_factor(
        max(1, layer.weight.numel() // scale.numel()), _qmax(layer.weight_spec)
    )
    return layer
