"""Real-integer Linear layers for the torch-int8 engine: pick one per quantized layer and build it.

The pieces live in sibling modules, by idea; every public name is importable from here:

* `int8_gemm`: the exact int8 x int8 -> int32 GEMM (`int8_matmul`, `int_mm_fits`);
* `int8_linear`: W8A8 on integer arithmetic (`Int8Linear`, `ActivationCodeCache`);
* `int8_weight_only_linear`: W8A16, int8 weights dequantized per call (`Int8WeightOnlyLinear`);
* `weight_only_kernels`: packed RTN / GPTQ / AWQ weights on PyTorch's CPU kernels (`WeightOnlyKernelLinear`);
* `integer_forms`: which of those serves a layer, read from its storage interface (`unsupported_reason`).

Example:
    >>> import torch, quantpilot as qp
    >>> qmodel = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(16, 4)), "int8-dynamic"))
    >>> layer = to_integer(qmodel[0])
    >>> type(layer).__name__, layer(torch.randn(3, 16)).shape
    ('Int8Linear', torch.Size([3, 4]))
"""

from __future__ import annotations

from torch import nn

from .int8_gemm import int8_matmul, int_mm_fits
from .int8_linear import ActivationCodeCache, Int8Linear
from .int8_weight_only_linear import Int8WeightOnlyLinear
from .integer_forms import INT8_GEMM, INT8_WEIGHT_ONLY, WEIGHT_ONLY_KERNEL, integer_form, unsupported_reason
from .weight_only_kernels import WeightOnlyKernelLinear

__all__ = [
    "ActivationCodeCache",
    "Int8Linear",
    "Int8WeightOnlyLinear",
    "int8_matmul",
    "int_mm_fits",
    "to_integer",
    "unsupported_reason",
]

# The module that runs each integer form (`integer_forms.integer_form`).
_MODULE_OF_FORM = {
    INT8_GEMM: Int8Linear,
    INT8_WEIGHT_ONLY: Int8WeightOnlyLinear,
    WEIGHT_ONLY_KERNEL: WeightOnlyKernelLinear,
}


def to_integer(layer: nn.Module) -> nn.Module:
    """The integer module for a frozen quantized Linear layer, chosen from its storage interface.

    Symmetric int8 weights with an int8 input quantizer give `Int8Linear`, with float input
    `Int8WeightOnlyLinear` (W8A16); packed weight-only layers from RTN / GPTQ / AWQ give
    `WeightOnlyKernelLinear`.

    Args:
        layer: a frozen quantized layer that `unsupported_reason` accepts.

    Returns:
        A new module computing the same function; it shares the layer's integer weight.

    Raises:
        ValueError: the layer cannot run on the integer path (the message says why).

    Example:
        >>> import torch, quantpilot as qp
        >>> m = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(8, 8)), "w8a16"))
        >>> type(to_integer(m[0])).__name__
        'Int8WeightOnlyLinear'
    """
    form, reason = integer_form(layer)
    if reason is not None:
        raise ValueError(f"this layer cannot run on the integer path: {reason}")
    return _MODULE_OF_FORM[form](layer)
