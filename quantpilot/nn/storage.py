"""What a quantized layer becomes at freeze, and the round-to-nearest arithmetic of packed weights.

`freeze` picks the storage from the spec: a weight-only Linear or Embedding with unsigned
`uint4` / `uint8` codes per group or per output channel becomes the packed `WeightOnlyLinear` /
`WeightOnlyEmbedding` (4-bit codes two per byte, 16-bit scales and zero points), exactly what
`quantpilot.algorithms.rtn` builds; every other layer keeps its class and stores its own codes
(`QuantModule.store_weight_as_integers`, 4-bit packed two per byte too). The storage interface
every layer answers (`weight_codes`, `weight_qparams`, `stored_weight_bytes`, `weight_numel`,
`dequantized_weight`) lives on `QuantModule`.

Example:
    >>> import torch
    >>> from quantpilot import QuantSpec, PerGroup
    >>> from quantpilot.nn import QuantLinear
    >>> spec = QuantSpec("uint4", symmetric=False, granularity=PerGroup(32))
    >>> type(frozen_form(QuantLinear.from_float(torch.nn.Linear(64, 8), weight_spec=spec))).__name__
    'WeightOnlyLinear'
"""

from __future__ import annotations

import torch
from torch import nn

from ..primitives import choose_qparams, min_max, quantize
from ..spec import PerChannel, PerGroup, QuantSpec
from .packing import pack_int4, unpack_int4
from .quant_module import QuantModule

__all__ = ["frozen_form", "packs_weight_only", "quantize_weight", "pack_int4", "unpack_int4"]


def quantize_weight(
    weight: torch.Tensor, spec: QuantSpec, scale_dtype: torch.dtype = torch.float16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest codes of a (out, in) weight on its min/max grid, with the qparams rounded to `scale_dtype`.

    The scale is rounded to the storage dtype before the codes are computed, so the stored layer
    dequantizes to exactly the values this function chose.

    Args:
        weight: float (out_features, in_features).
        spec: a `weight_only_spec` (PerGroup or PerChannel(0)).
        scale_dtype: torch.float16 or torch.bfloat16.

    Returns:
        (codes uint8 (out, in), scale (out, groups) float32, zero_point (out, groups) float32).

    Example:
        >>> from quantpilot.nn.packed import weight_only_spec
        >>> codes, s, z = quantize_weight(torch.tensor([[0.0, 1.5, 3.0, -1.5]]), weight_only_spec(4, None))
        >>> codes.tolist(), s.tolist(), z.tolist()
        ([[5, 10, 15, 0]], [[0.300048828125]], [[5.0]])
    """
    w = weight.detach().float()
    mn, mx = min_max(w, spec)
    scale, zero_point = choose_qparams(mn, mx, spec)
    scale = scale.to(scale_dtype).float()
    codes = quantize(w, scale, zero_point, spec)
    shape = (w.shape[0], -1)
    return codes, scale.reshape(shape), zero_point.float().reshape(shape)


def packs_weight_only(module: nn.Module) -> bool:
    """True when `frozen_form` turns this layer into a packed weight-only layer.

    That takes a layer type with a packed form (`weight_only_form`: Linear, Embedding), float
    inputs, unsigned `uint4` / `uint8` weights per group or per output channel on the min/max
    range (RTN's arithmetic), and no QAT-learned scale or SmoothQuant divisor to honour.

    Example:
        >>> from quantpilot.nn import QuantLinear
        >>> packs_weight_only(QuantLinear.from_float(torch.nn.Linear(4, 4)))  # int8 weights, int8 inputs
        False
    """
    spec = getattr(module, "weight_spec", None)
    if not isinstance(module, QuantModule) or module.is_frozen or spec is None:
        return False
    if getattr(type(module), "weight_only_form", None) is None or module.input_quantizer.spec is not None:
        return False
    g = spec.granularity
    per_row = isinstance(g, PerGroup) or (isinstance(g, PerChannel) and g.axis in (0, -2))
    weight = module.weight
    return (
        spec.dtype.value in ("uint4", "uint6", "uint8")
        and per_row
        and weight.dim() == 2
        and (spec.dtype.bits != 4 or weight.shape[1] % 2 == 0)
        and module.weight_calibrator.kind == "minmax"
        and module._parameters.get("weight_scale") is None
        and getattr(module, "input_smoothing", None) is None
    )


def frozen_form(module: QuantModule, scale_dtype: torch.dtype = torch.float16) -> nn.Module:
    """The module a quantized layer becomes at `quantpilot.freeze`.

    A layer `packs_weight_only` accepts becomes a `WeightOnlyLinear` / `WeightOnlyEmbedding` with
    `quantize_weight`'s codes (the bias kept); any other layer is frozen in place and returned.

    Args:
        module: a quantized layer (frozen already or not).
        scale_dtype: torch.float16 or torch.bfloat16, for the packed layers' scales and zero points.

    Example:
        >>> from quantpilot.nn import QuantLinear
        >>> layer = QuantLinear.from_float(torch.nn.Linear(4, 4), input_quantizer=None)
        >>> frozen_form(layer) is layer, layer.is_frozen
        (True, True)
    """
    if not isinstance(module, QuantModule):
        raise TypeError(f"frozen_form takes a quantized layer (a QuantModule), got {type(module).__name__}")
    if not packs_weight_only(module):
        module.freeze()
        return module
    codes, scale, zero_point = quantize_weight(module.weight, module.weight_spec, scale_dtype)
    layer = module.weight_only_form(codes, scale, zero_point, scale_dtype)
    layer.float_dtype = module.weight.dtype
    layer.train(module.training)
    return layer
