"""Which integer module serves a quantized layer, decided on its storage interface, not its class.

A layer declares what its `forward` computes (`QuantModule.computes`); its `weight_spec`,
`weight_qparams()` and `input_quantizer` say how weight and input are stored. From those alone:

* "lookup" (an embedding): runs as is;
* "linear" with packed weight-only storage (uint4 / uint8 codes, 16-bit qparams, float input, as RTN,
  GPTQ and AWQ produce): PyTorch's packed weight-only kernels (`weight_only_kernels`);
* "linear" with symmetric int8 weights and an int8 / uint8 input quantizer (static per tensor,
  dynamic per token or per tensor): the int8 GEMM (`Int8Linear`);
* "linear" with symmetric int8 weights and float input: int8 weight-only (`Int8WeightOnlyLinear`);
* anything else: not served, with a sentence saying why.

Example:
    >>> import torch, quantpilot as qp
    >>> qmodel = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(16, 4)), "int8-dynamic"))
    >>> integer_form(qmodel[0])
    ('int8 GEMM', None)
"""

from __future__ import annotations

import torch
from torch import nn

from ..spec import PerChannel, PerTensor, PerToken, QuantDtype
from .int8_gemm import INT32_MAX, MAX_ACT_CODE, abs_row_sum
from .quant_module import QuantModule
from .weight_only_kernels import is_packed_weight_only, kernel_problem

__all__ = [
    "INT8_GEMM",
    "INT8_WEIGHT_ONLY",
    "WEIGHT_ONLY_KERNEL",
    "form_problem",
    "input_smoothing",
    "integer_form",
    "per_channel_weight_scale",
    "unsupported_reason",
]

INT8_GEMM = "int8 GEMM"
INT8_WEIGHT_ONLY = "int8 weight-only"
WEIGHT_ONLY_KERNEL = "weight-only kernel"

# What to build instead, when a module is handed a layer of another form.
_OTHER_FORM = {
    INT8_GEMM: "the input is quantized: use Int8Linear",
    INT8_WEIGHT_ONLY: "the input is float (weight-only): use Int8WeightOnlyLinear",
    WEIGHT_ONLY_KERNEL: "the weight is packed weight-only: use WeightOnlyKernelLinear",
}


def _weight_problem(layer: QuantModule) -> str | None:
    """Why the layer's stored weight is not symmetric int8 per output channel, or None."""
    spec = layer.weight_spec
    if spec is None:
        return "weights are float (weight_spec=None)"
    if spec.dtype is not QuantDtype.INT8:
        return f"weights are {spec.dtype.value}: the integer path multiplies int8 weight codes"
    g = spec.granularity
    if isinstance(g, PerChannel) and g.axis % 2 != 0:
        return f"weights are per input channel (PerChannel(axis={g.axis})): a scale along K cannot leave the sum"
    if not isinstance(g, PerTensor | PerChannel):
        return f"weights are {type(g).__name__}: one scale per group cannot leave the sum over K; use PerChannel(0)"
    if not spec.symmetric or bool(layer.weight_qparams()[1].ne(0).any()):
        return "weights are asymmetric (zero point != 0): int8 GEMM here needs symmetric weights"
    # |acc - zp_x * R| <= 128 * sum|W| + 128 * |R| <= 256 * sum|W|: int32 must hold that.
    abs_rows = abs_row_sum(layer.weight_codes())
    if abs_rows.numel() and 2 * MAX_ACT_CODE * int(abs_rows.max()) > INT32_MAX:
        return "the int32 accumulator could overflow (very large in_features)"
    return None


def _activation_problem(layer: QuantModule) -> str | None:
    """Why the layer's input quantizer cannot feed int8 codes to the GEMM, or None."""
    q = layer.input_quantizer
    spec = q.spec
    if spec.dtype not in (QuantDtype.INT8, QuantDtype.UINT8):
        return f"activations are {spec.dtype.value}: the integer path takes int8 / uint8 activation codes"
    g = spec.granularity
    if q.dynamic and not isinstance(g, PerTensor | PerToken):
        return f"dynamic {type(g).__name__} activations: only per-token or per-tensor scales leave the sum over K"
    if not q.dynamic and not isinstance(g, PerTensor):
        return f"static {type(g).__name__} activations: a scale per input channel cannot leave the sum over K"
    if not q.dynamic and q.scale is None:
        return "the static input quantizer has no range: calibrate and freeze the model first"
    return None


def integer_form(layer: nn.Module) -> tuple[str | None, str | None]:
    """The integer form that serves `layer` and None, or None and a sentence saying why none does.

    Args:
        layer: a quantized layer of a frozen model.

    Returns:
        `(form, None)` with form one of `INT8_GEMM`, `INT8_WEIGHT_ONLY`, `WEIGHT_ONLY_KERNEL`, or
        `(None, reason)`.

    Example:
        >>> import torch, quantpilot as qp
        >>> m = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(8, 8)), "w8a16"))
        >>> integer_form(m[0])
        ('int8 weight-only', None)
    """
    computes = getattr(layer, "computes", None)
    if computes == "lookup":
        return None, f"{type(layer).__name__} is an embedding, a lookup with no matmul: it runs as is"
    if computes != "linear":
        return None, f"{type(layer).__name__}: the integer path serves QuantLinear and WeightOnlyLinear layers only"
    if is_packed_weight_only(layer):
        problem = kernel_problem(layer)  # packed int8 / int4 from RTN, GPTQ, AWQ
        return (WEIGHT_ONLY_KERNEL, None) if problem is None else (None, problem)
    if not layer.is_frozen and layer.weight_spec is not None:
        return None, "the layer is not frozen: call quantpilot.freeze(model) first"
    problem = _weight_problem(layer)
    if problem is not None:
        return None, problem
    if layer.input_quantizer.spec is None:
        return INT8_WEIGHT_ONLY, None
    problem = _activation_problem(layer)
    return (INT8_GEMM, None) if problem is None else (None, problem)


def unsupported_reason(layer: nn.Module) -> str | None:
    """Why a quantized layer cannot run on the integer path, or None if it can.

    Served (see `integer_form`): Linear layers with symmetric int8 weights (per tensor or per output
    channel) and either int8 / uint8 activations (static per tensor, dynamic per token or per
    tensor) or float activations (weight-only); packed weight-only Linear layers (int8 per channel,
    int4 in groups of 32-256) on PyTorch's weight-only kernels.

    Args:
        layer: a quantized layer of a frozen model.

    Returns:
        None, or a sentence saying what prevents the integer path.

    Example:
        >>> import torch, quantpilot as qp
        >>> m = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(128, 8)), "w4a16-g128"))
        >>> unsupported_reason(m[0])
        "out_features=8 is not a multiple of 64 (the CPU int4 pack's row block)"
    """
    return integer_form(layer)[1]


def form_problem(layer: nn.Module, wanted: str) -> str | None:
    """Why `layer` cannot be served in the integer form `wanted`, or None.

    Example:
        >>> import torch, quantpilot as qp
        >>> m = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(8, 8)), "w8a16"))
        >>> form_problem(m[0], INT8_GEMM)
        'the input is float (weight-only): use Int8WeightOnlyLinear'
    """
    form, reason = integer_form(layer)
    if reason is None and form != wanted:
        reason = _OTHER_FORM[form]
    return reason


def input_smoothing(layer: QuantModule) -> torch.Tensor | None:
    """A copy of the layer's SmoothQuant per-input-channel divisor (applied before its input quantizer), or None.

    Example:
        >>> import torch
        >>> from quantpilot.nn import QuantLinear
        >>> input_smoothing(QuantLinear(torch.randn(2, 3), None)) is None
        True
    """
    # getattr: layers saved before that buffer existed still convert.
    smoothing = getattr(layer, "input_smoothing", None)
    return None if smoothing is None else smoothing.detach().float().clone()


def per_channel_weight_scale(layer: QuantModule) -> torch.Tensor:
    """The weight scale as one float32 value per output channel (a per-tensor scale repeated).

    Example:
        >>> import torch
        >>> from quantpilot.nn import QuantLinear
        >>> layer = QuantLinear(torch.randn(3, 4), None); layer.freeze()
        >>> per_channel_weight_scale(layer).shape
        torch.Size([3])
    """
    return layer.weight_qparams()[0].float().reshape(-1).expand(layer.out_features).contiguous()
