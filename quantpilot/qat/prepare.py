"""`prepare`: turn a calibrated post-training-quantized model into one ready for QAT.

QAT starts from the best calibrated PTQ model (the activation ranges calibration found), not from
the float model: the fine-tuning then only has to repair what rounding broke. The prepared model
is an ordinary `nn.Module` whose forward pass fake-quantizes weights and activations (QDQ), with
straight-through gradients, so any training loop can train it; `quantpilot.freeze` then stores
the trained weights as integers with the fixed (or learned) ranges, without re-calibrating.

Example:
    >>> import torch, quantpilot as qp
    >>> qmodel = qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    >>> with qp.calibrate(qmodel):
    ...     _ = qmodel(torch.randn(8, 4))
    >>> qat_model = qp.qat.prepare(qmodel, learn_ranges=True)
    >>> sorted(n for n, p in qat_model.named_parameters())
    ['0.bias', '0.input_quantizer.scale', '0.weight', '0.weight_scale']
"""

from __future__ import annotations

import copy

from torch import nn

from ..api import _static_quantizers, quantized_layers, uncalibrated_quantizers
from .learned_scale import WEIGHT_INITS, learn_activation_scale, learn_weight_scale

__all__ = ["prepare"]


def prepare(
    model: nn.Module, learn_ranges: bool = False, *, weight_init: str = "calibrator", inplace: bool = False
) -> nn.Module:
    """Fix the calibrated activation ranges and keep the weights float, fake-quantized in forward.

    Args:
        model: a quantized model after calibration (``with quantpilot.calibrate(model): ...``),
            not frozen. Weight-only or dynamic-activation recipes need no calibration.
        learn_ranges: make the activation scales and the weight scales `nn.Parameter`s trained
            with LSQ's gradient (weight scales start from the weight calibrator's). Without it,
            activation ranges stay fixed and weight ranges follow the weights (min/max each step).
        weight_init: where learned weight scales start (needs ``learn_ranges=True``):
            "calibrator", the recipe's weight calibrator, so QAT starts exactly from the PTQ
            model; or "mse", each channel's range shrunk to the least squared quantization error
            (`quantpilot.qat.learned_scale.mse_weight_qparams`), which at 4 bits gives QAT a
            finer grid to start from.
        inplace: change `model` itself instead of a deep copy.

    Returns:
        The QAT model (in training mode), a plain `nn.Module`.

    Raises:
        TypeError: `model` is not an `nn.Module`.
        ValueError: the model is not quantized, is frozen, or a static input was never calibrated; an
            unknown `weight_init`, or "mse" without ``learn_ranges=True``.

    Example:
        >>> import torch, quantpilot as qp
        >>> qmodel = qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
        >>> try:
        ...     qp.qat.prepare(qmodel)
        ... except ValueError as err:
        ...     print(str(err)[:56])
        1 static layer input(s) were never calibrated (e.g. ['0.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(learn_ranges, bool):
        raise TypeError(f"learn_ranges must be True or False, got {learn_ranges!r}")
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {', '.join(WEIGHT_INITS)}, got {weight_init!r}")
    if weight_init != "calibrator" and not learn_ranges:
        raise ValueError(
            f"weight_init={weight_init!r} sets learned weight scales: pass learn_ranges=True (without it the "
            "weight range follows the weights' min/max at every step)"
        )
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("this model is not quantized: call quantpilot.quantize(model, recipe) and calibrate it first")
    frozen = [name for name, m in layers if m.is_frozen]
    if frozen:
        raise ValueError(
            f"layers {frozen[:3]} are frozen (weights stored as integers): QAT needs the float weights, so "
            "prepare the calibrated model before quantpilot.freeze"
        )
    uncalibrated = uncalibrated_quantizers(model)
    if uncalibrated:
        raise ValueError(
            f"{len(uncalibrated)} static layer input(s) were never calibrated (e.g. {uncalibrated[:3]}): run data "
            "through the model inside `with quantpilot.calibrate(model):` before quantpilot.qat.prepare"
        )
    target = model if inplace else copy.deepcopy(model)
    for q in _static_quantizers(target):
        # Fixed once, from calibration: QAT never re-calibrates (the rules of thumb say not to).
        q.fix_qparams()
        if learn_ranges:
            learn_activation_scale(q)
    if learn_ranges:
        for _, layer in quantized_layers(target):
            learn_weight_scale(layer, init=weight_init)
    return target.train()
