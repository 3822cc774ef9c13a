"""Weight-only int8 / int4 Linear on PyTorch's packed CPU kernels, for prefill and token-by-token decode.

`WeightOnlyKernelLinear` serves a `WeightOnlyLinear` (from RTN, GPTQ, AWQ) with 16-bit activations:

* int8, per output channel: `torch.ops.aten._weight_int8pack_mm(x, W8, s)` computes `x @ (W8 * s).T`
  with signed codes `W8 = q - 128`. The asymmetric zero point `z` (shifted alike) adds a rank-one term:
  `x @ ((q - z) * s).T = x @ (W8 * s).T - (sum_k x[:, k]) * (s * (z - 128))`.
* int4, groups of 32 / 64 / 128 / 256: `torch.ops.aten._weight_int4pack_mm_for_cpu(x, P, g, SZ)`
  computes `x @ W.T` with `W = (q - 8) * s + zero` per group; ours is `(q - z) * s`, so
  `zero = (8 - z) * s`. `P` is `_convert_weight_to_int4pack_for_cpu`'s layout (measured on torch 2.13:
  blocks of 64 output rows, for each input column 32 bytes, byte j holding rows j and j + 32); it is
  the only copy of the weight kept, and `unpacked_codes` reads it back for the prefill path.

Measured on this CPU (AVX-512 BF16, 1 thread, contended; `make bench-llm` has the model-level numbers):
both kernels beat a bf16 matmul at one row (decode, 13-16 us vs 32-36 us at 768 x 256) but are 6-8x
slower than dequantize-then-bf16-matmul at 512 rows (prefill), and slow with float32 activations.
So activations run in bf16, rows up to `kernel_max_rows` use the kernel, and larger batches
dequantize the weight to bf16 for that call (no float copy is kept).

Example:
    >>> import torch
    >>> from quantpilot.nn.packed import WeightOnlyLinear, weight_only_spec
    >>> layer = WeightOnlyLinear.from_codes(torch.randint(0, 16, (64, 128)), torch.rand(64, 1) / 10,
    ...                                     torch.full((64, 1), 8.0), weight_only_spec(4, 128))
    >>> fast = WeightOnlyKernelLinear(layer)
    >>> fast.path, fast(torch.randn(1, 128)).shape
    ('int4 _weight_int4pack_mm_for_cpu g128 (decode) / dequantize+bf16 matmul (prefill)', torch.Size([1, 64]))
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..spec import PerChannel, PerGroup, QuantDtype
from .packed import WeightOnlyLinear

__all__ = ["WeightOnlyKernelLinear", "is_packed_weight_only", "kernel_problem", "unpack_cpu_int4pack"]

_INT4_GROUPS = (32, 64, 128, 256)
# Rows (tokens) up to which the packed kernel beats dequantize + bf16 matmul on this CPU (measured:
# ~2.5x faster at 1 row, 6-8x slower at 512 rows); decode runs 1 row per sequence.
KERNEL_MAX_ROWS = 16


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


def is_packed_weight_only(layer: nn.Module) -> bool:
    """Whether a quantized layer stores the weight-only scheme of RTN / GPTQ / AWQ and takes float input.

    Read from the storage interface: uint4 / uint8 codes, qparams `(q - z) * s` with the zero point
    in the scales' float dtype (integer-domain layers such as `QuantLinear` keep int32 zero points),
    and no input quantizer.

    Example:
        >>> import torch
        >>> from quantpilot.nn import QuantLinear
        >>> from quantpilot.nn.packed import WeightOnlyLinear, weight_only_spec
        >>> is_packed_weight_only(WeightOnlyLinear(64, 64, weight_only_spec(4, 32)))
        True
        >>> is_packed_weight_only(QuantLinear.from_float(torch.nn.Linear(4, 2), weight_spec=weight_only_spec(8, None)))
        False
    """
    spec = getattr(layer, "weight_spec", None)
    if spec is None or spec.dtype not in (QuantDtype.UINT4, QuantDtype.UINT8):
        return False
    if layer.input_quantizer.spec is not None or not layer.is_frozen:
        return False
    return layer.weight_qparams()[1].is_floating_point()


def _bits(layer: WeightOnlyLinear) -> int:
    return 4 if layer.weight_spec.dtype is QuantDtype.UINT4 else 8


def _group_size(layer: WeightOnlyLinear) -> int:
    """Input columns sharing one scale: the spec's group, or every column for per-channel scales."""
    g = layer.weight_spec.granularity
    return g.size if isinstance(g, PerGroup) else layer.in_features


def kernel_problem(layer: WeightOnlyLinear) -> str | None:
    """Why `layer` cannot run on PyTorch's packed weight-only kernels, or None.

    Decided on the layer's interface (`computes`, `weight_spec`, `weight_qparams()`, the input
    quantizer), not its class.

    Example:
        >>> from quantpilot.nn.packed import WeightOnlyLinear, weight_only_spec
        >>> kernel_problem(WeightOnlyLinear(128, 64, weight_only_spec(8, 64)))
        'int8 weights with per-group scales: _weight_int8pack_mm takes one scale per output channel'
    """
    if getattr(layer, "computes", None) != "linear" or not is_packed_weight_only(layer):
        return (
            f"{type(layer).__name__} is not a packed weight-only Linear "
            "(uint4 / uint8 codes, 16-bit scales and zero points, float input)"
        )
    if layer.weight_qparams()[0].device.type != "cpu":
        return "the packed kernels used here are the CPU ones"
    if _bits(layer) == 8:
        if not isinstance(layer.weight_spec.granularity, PerChannel):
            return "int8 weights with per-group scales: _weight_int8pack_mm takes one scale per output channel"
        if not _has_op("_weight_int8pack_mm"):
            return "this PyTorch build has no aten._weight_int8pack_mm"
        return None
    group_size = _group_size(layer)
    if group_size not in _INT4_GROUPS:
        return f"int4 group size {group_size}: _weight_int4pack_mm_for_cpu takes groups of {_INT4_GROUPS}"
    if layer.out_features % 64:
        return f"out_features={layer.out_features} is not a multiple of 64 (the CPU int4 pack's row block)"
    if not (_has_op("_weight_int4pack_mm_for_cpu") and _has_op("_convert_weight_to_int4pack_for_cpu")):
        return "this PyTorch build has no aten._weight_int4pack_mm_for_cpu"
    return None


def unpack_cpu_int4pack(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """Codes (out, in) uint8 from `_convert_weight_to_int4pack_for_cpu`'s (out, in / 2) byte layout.

    Example:
        >>> q = torch.randint(0, 16, (64, 32), dtype=torch.int32)
        >>> p = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        >>> torch.equal(unpack_cpu_int4pack(p, 64, 32), q.to(torch.uint8))
        True
    """
    blocks = packed.reshape(out_features // 64, in_features, 32)
    both = torch.cat((blocks & 0x0F, blocks >> 4), dim=2)  # (row block, column, 64 rows)
    return both.transpose(1, 2).reshape(out_features, in_features)


class WeightOnlyKernelLinear(nn.Module):
    """A `WeightOnlyLinear` on `_weight_int8pack_mm` / `_weight_int4pack_mm_for_cpu`, activations in bf16.

    Args:
        layer: a `WeightOnlyLinear` that `kernel_problem` accepts.
        kernel_max_rows: input rows up to which the packed kernel runs; more rows dequantize the
            weight to bf16 for the call and use a bf16 matmul.

    Attributes:
        path: what the layer runs (shown by the torch-int8 engine).

    Example:
        >>> from quantpilot.nn.packed import WeightOnlyLinear, weight_only_spec
        >>> layer = WeightOnlyLinear.from_codes(torch.randint(0, 256, (8, 16)), torch.rand(8) / 50,
        ...                                     torch.full((8,), 128.0), weight_only_spec(8, None))
        >>> WeightOnlyKernelLinear(layer)(torch.randn(3, 16)).dtype
        torch.float32
    """

    def __init__(self, layer: WeightOnlyLinear, kernel_max_rows: int = KERNEL_MAX_ROWS) -> None:
        super().__init__()
        problem = kernel_problem(layer)
        if problem is not None:
            raise ValueError(f"WeightOnlyKernelLinear cannot serve this layer: {problem}")
        self.in_features, self.out_features, self.bits = layer.in_features, layer.out_features, _bits(layer)
        self.kernel_max_rows = int(kernel_max_rows)
        self.compute_dtype = torch.bfloat16
        scale, zero = (t.float() for t in layer.weight_qparams())  # (out, groups)
        codes = layer.weight_codes()  # unpacked: the int4 kernel repacks them into its own layout below
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().to(self.compute_dtype))
        if self.bits == 8:
            self.group_size = self.in_features
            signed = (codes.to(torch.int16) - 128).to(torch.int8)
            self.register_buffer("weight_int8", signed.contiguous())
            self.register_buffer("scale", scale[:, 0].to(self.compute_dtype))  # the kernel takes x's dtype
            self.register_buffer("scale_float", scale[:, 0].contiguous())  # exact, for the prefill path
            # The rank-one zero-point term's per-channel factor s * (z - 128), in float32.
            self.register_buffer("zero_term", (scale[:, 0] * (zero[:, 0] - 128)).contiguous())
            self.path = "int8 _weight_int8pack_mm (decode) / dequantize+bf16 matmul (prefill)"
        else:
            self.group_size = _group_size(layer)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
            if not torch.equal(unpack_cpu_int4pack(packed, self.out_features, self.in_features), codes):
                raise ValueError(
                    "this PyTorch build packs int4 weights in a layout quantpilot does not know; the torch-int8 "
                    "engine keeps this layer as WeightOnlyLinear"
                )
            self.register_buffer("weight_int4pack", packed)
            # (groups, out, 2): scale and the float-domain zero (8 - z) * s of W = (q - 8) * s + zero.
            sz = torch.stack((scale.T, ((8 - zero) * scale).T), dim=-1)
            self.register_buffer("scale_and_zero", sz.to(self.compute_dtype).contiguous())
            # The stored (fp16) qparams exactly, for the prefill path: bf16 keeps 3 fewer mantissa bits.
            self.register_buffer("group_scale", scale.contiguous())
            self.register_buffer("group_zero", zero.contiguous())
            self.path = (
                f"int4 _weight_int4pack_mm_for_cpu g{self.group_size} (decode) / dequantize+bf16 matmul (prefill)"
            )

    def dequantized_weight(self) -> torch.Tensor:
        """The weight in bf16, rebuilt from the packed codes (used for large batches).

        Example:
            >>> from quantpilot.nn.packed import WeightOnlyLinear, weight_only_spec
            >>> layer = WeightOnlyLinear.from_codes(torch.randint(0, 256, (4, 8)), torch.ones(4),
            ...                                     torch.full((4,), 128.0), weight_only_spec(8, None))
            >>> fast = WeightOnlyKernelLinear(layer)
            >>> torch.equal(fast.dequantized_weight().float(), layer.quantized_weight(torch.bfloat16).float())
            True
        """
        if self.bits == 8:
            w = self.weight_int8.float() * self.scale_float[:, None] - self.zero_term[:, None]
            return w.to(self.compute_dtype)
        codes = unpack_cpu_int4pack(self.weight_int4pack, self.out_features, self.in_features).float()
        grouped = codes.reshape(self.out_features, -1, self.group_size)
        w = (grouped - self.group_zero.unsqueeze(-1)) * self.group_scale.unsqueeze(-1)
        return w.reshape(self.out_features, self.in_features).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype)
        if x2.shape[0] > self.kernel_max_rows:
            y = F.linear(x2, self.dequantized_weight(), self.bias)
        else:
            x2 = x2.contiguous()
            if self.bits == 8:
                y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scale)
                # Asymmetric zero point: subtract (row sums of x) * s * (z - 128), computed in float32.
                y = (y.float() - x2.float().sum(dim=1, keepdim=True) * self.zero_term).to(self.compute_dtype)
            else:
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                    x2, self.weight_int4pack, self.group_size, self.scale_and_zero
                )
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.path}"
