"""Empirical bias correction: give back, through each layer's bias, the mean shift quantization causes.

Rounding weights and activations does not only add noise: the error has a non-zero mean per output
channel (Nagel et al., "Data-Free Quantization", 2019, section 4.2), which the following LayerNorm,
GELU or softmax does not average away. Running the float and the quantized model on the same
calibration batches measures that mean for every quantized layer, and subtracting it from the layer's
bias removes it at no run-time cost (the bias is float in every engine's int8 kernel). NNCF's "fast
bias correction" rests on the same idea.

All layers are measured in one pass, each with the error accumulated from the layers before it, so
the correction also absorbs the upstream layers' mean shift as it reaches this layer.

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    >>> batches = [torch.randn(32, 8) for _ in range(4)]
    >>> qm = qp.quantize(net, qp.Recipe(activations=qp.QuantSpec("int4")))
    >>> with qp.calibrate(qm):
    ...     for b in batches: _ = qm(b)
    >>> corrected = bias_correction(qp.freeze(qm), net, batches)
    >>> err = lambda m: (m(batches[0]) - net(batches[0])).mean(0).abs().mean()
    >>> bool(err(corrected) < err(qm))
    True
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn

from ..api import quantized_layers
from ..batches import call_model, eval_mode
from ..nn.quant_module import QuantModule

__all__ = ["bias_correction", "MIN_CALIBRATION_BATCHES"]

MIN_CALIBRATION_BATCHES = 1


def _channel_mean(output: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, int]:
    dims = [d for d in range(output.dim()) if d != channel_dim % output.dim()]
    count = output.numel() // output.shape[channel_dim]
    return output.detach().double().sum(dim=dims), count


def bias_correction(
    qmodel: nn.Module,
    float_model: nn.Module,
    calib_batches: Iterable[Any],
    *,
    layers: Sequence[str] = ("*",),
    inplace: bool = False,
) -> nn.Module:
    """Shift the bias of every selected quantized layer by the mean output error on calibration data.

    Args:
        qmodel: a frozen quantized model made from `float_model`.
        float_model: the float model (same module names); not modified.
        calib_batches: batches as the model takes them (dict, tuple or tensor); iterated once.
        layers: fnmatch patterns of the quantized layers to correct.
        inplace: change `qmodel` itself instead of a copy.

    Returns:
        The corrected quantized model.

    Raises:
        ValueError: `qmodel` is not frozen, a layer has no float counterpart, or there is no batch.

    Example:
        >>> bias_correction.__name__
        'bias_correction'
    """
    from ..api import is_frozen

    if not isinstance(qmodel, nn.Module) or not isinstance(float_model, nn.Module):
        raise TypeError("qmodel and float_model must be torch.nn.Module instances")
    if not is_frozen(qmodel):
        raise ValueError("bias_correction measures the final quantized model: quantpilot.freeze(qmodel) first")
    target = qmodel if inplace else copy.deepcopy(qmodel)
    float_modules = dict(float_model.named_modules())
    selected: list[tuple[str, QuantModule]] = []
    for name, layer in quantized_layers(target):
        if type(layer).__name__ == "QuantEmbedding" or not any(fnmatch(name, p) for p in layers):
            continue
        if name not in float_modules:
            raise ValueError(f"'{name}' has no counterpart in float_model; pass the model qmodel was made from")
        selected.append((name, layer))
    sums: dict[str, list] = {name: [0.0, 0.0, 0] for name, _ in selected}  # float sum, quantized sum, count

    def hook(name: str, slot: int, channel_dim: int):
        def record(_module, _inputs, output):
            total, count = _channel_mean(output, channel_dim)
            sums[name][slot] = sums[name][slot] + total
            if slot == 0:
                sums[name][2] += count

        return record

    handles = []
    for name, layer in selected:
        channel_dim = -1 if hasattr(layer, "in_features") else 1
        handles.append(float_modules[name].register_forward_hook(hook(name, 0, channel_dim)))
        handles.append(layer.register_forward_hook(hook(name, 1, channel_dim)))
    batches = 0
    try:
        with torch.no_grad(), eval_mode(float_model), eval_mode(target):
            for batch in calib_batches:
                call_model(float_model, batch)
                call_model(target, batch)
                batches += 1
    finally:
        for handle in handles:
            handle.remove()
    if batches < MIN_CALIBRATION_BATCHES:
        raise ValueError("bias_correction needs calibration batches; calib_batches was empty")
    with torch.no_grad():
        for name, layer in selected:
            float_sum, quant_sum, count = sums[name]
            shift = ((float_sum - quant_sum) / count).to(torch.float32)
            if layer.bias is None:
                layer.bias = nn.Parameter(shift)
            else:
                layer.bias.add_(shift.to(layer.bias.dtype))
    return target
