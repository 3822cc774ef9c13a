"""W8A16 Linear: `Int8WeightOnlyLinear` keeps activations float and dequantizes int8 weights per call.

`torch.ops.aten._weight_int8pack_mm` exists on this build but measured 20-40x slower than a float
matmul at BERT shapes (4096 rows) on this CPU (AVX-512 VNNI, no AMX), and slower still at 8 rows,
so it is not used here. With bf16 activations and one row (LLM decode) it is ~2.5x faster than a
bf16 matmul, so `weight_only_kernels.WeightOnlyKernelLinear` (packed RTN / GPTQ / AWQ layers) uses
it for decode-sized batches; `to_integer` dispatches those layers there
(`quantpilot.nn.integer_forms` decides which layer takes which path).

Example:
    >>> import torch, quantpilot as qp
    >>> m = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(8, 3)), "w8a16"))
    >>> Int8WeightOnlyLinear(m[0]).path
    'weight-only int8, dequantized per call (float GEMM)'
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..primitives import dequantize
from ..spec import PerChannel, QuantSpec
from .integer_forms import INT8_WEIGHT_ONLY, form_problem, input_smoothing, per_channel_weight_scale
from .linear import QuantLinear

__all__ = ["Int8WeightOnlyLinear"]


class Int8WeightOnlyLinear(nn.Module):
    """W8A16 Linear: int8 weights dequantized per call, float activations.

    The per-channel scale is applied where it costs less: for M >= K rows the weight is
    dequantized with `primitives.dequantize` (the same values as the fake-quant layer); for fewer
    rows (token-by-token decoding) the int8 codes are cast and the scale multiplies the M x N
    output instead of the N x K weight.

    Args:
        layer: a frozen `QuantLinear` with symmetric int8 weights and no input quantizer.

    Example:
        >>> import torch, quantpilot as qp
        >>> m = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(8, 3)), "w8a16"))
        >>> Int8WeightOnlyLinear(m[0])(torch.randn(2, 8)).shape
        torch.Size([2, 3])
    """

    path = "weight-only int8, dequantized per call (float GEMM)"

    def __init__(self, layer: QuantLinear) -> None:
        super().__init__()
        reason = form_problem(layer, INT8_WEIGHT_ONLY)
        if reason is not None:
            raise ValueError(f"Int8WeightOnlyLinear cannot serve this layer: {reason}")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        # The stored codes as dequantize sees them once a per-tensor scale is expanded per row.
        self.weight_spec = QuantSpec("int8", granularity=PerChannel(0))
        self.register_buffer("input_smoothing", input_smoothing(layer))
        self.register_buffer("weight_int", layer.weight_codes())
        self.register_buffer("weight_scale", per_channel_weight_scale(layer))
        self.register_buffer("weight_zero_point", torch.zeros(self.out_features, dtype=torch.int32))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_smoothing is not None:
            x = x / self.input_smoothing.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        rows = x.numel() // max(self.in_features, 1)
        if rows >= self.in_features:
            weight = dequantize(self.weight_int, self.weight_scale, self.weight_zero_point, self.weight_spec, x.dtype)
            return F.linear(x, weight, bias)
        # int8 codes are exact in bf16 / fp16 / fp32; the scale then multiplies the smaller output.
        y = F.linear(x, self.weight_int.to(x.dtype))
        scale = self.weight_scale.to(x.dtype)
        return torch.mul(y, scale) if bias is None else torch.addcmul(bias, y, scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.path}"
