"""W8A8 Linear on integer arithmetic: `Int8Linear` and the activation-code cache its layers share.

`Int8Linear` runs W8A8 with integer arithmetic (Intel Distiller's "integer FC" derivation).
With activation codes `q_x = round(x / s_x) + zp_x` and symmetric weight codes `W_q` (zero point 0)
of scale `s_w[n]` per output channel:

    y[m, n] = s_x * s_w[n] * sum_k (q_x[m, k] - zp_x) * W_q[n, k] + b[n]
            = s_x * s_w[n] * (acc[m, n] - zp_x * R[n]) + b[n],
    acc = q_x @ W_q.T  (int8 x int8 -> int32),   R[n] = sum_k W_q[n, k]  (precomputed once).

The zero-point cross term needs only the weight row sums because the weights are symmetric; an
asymmetric weight would add a per-token sum of the activation codes, so such layers are not served.

* static activations (one fixed `s_x`, `zp_x`): the bias is quantized to int32 at scale `s_x * s_w[n]`
  and folded with `-zp_x * R[n]` into one int32 constant per channel, so the whole sum
  `acc + b_q - zp_x * R` is formed in int32 and rescaled once (as integer-only engines do);
  its rounding error is at most half an accumulator step `s_x * s_w[n] / 2`;
* dynamic activations (`s_x`, `zp_x` per token or per batch): a per-call int32 bias would cost an
  M x N division, so the bias stays float and is added during the rescale (`addcmul`, one pass).

The rescale runs in place on the accumulator's own memory: on this 2-core CPU the unfused eager
path spends as much time on its M x K and M x N passes (and the page faults of fresh buffers) as
on the int8 GEMM itself.

The GEMM is `quantpilot.nn.int8_gemm.int8_matmul` (`torch._int_mm` where it fits).

Example:
    >>> import torch, quantpilot as qp
    >>> qmodel = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(16, 4)), "int8-dynamic"))
    >>> Int8Linear(qmodel[0])(torch.randn(3, 16)).shape
    torch.Size([3, 4])
"""

from __future__ import annotations

import torch
from torch import nn

from ..primitives import choose_qparams, min_max, quantize
from ..spec import PerToken, QuantDtype, QuantSpec
from .int8_gemm import INT32_MAX, MAX_ACT_CODE, abs_row_sum, int8_matmul
from .integer_forms import INT8_GEMM, form_problem, input_smoothing, per_channel_weight_scale
from .linear import QuantLinear

__all__ = ["ActivationCodeCache", "Int8Linear"]


class ActivationCodeCache:
    """The int8 codes of the last activation quantized, so layers fed the same tensor quantize it once.

    In a transformer the query, key and value projections read one hidden-state tensor; with the
    same quantizer settings their codes are identical, and quantizing costs about as much as an
    int8 GEMM here. A hit needs the very same tensor object, unchanged since (its version counter,
    which inference-mode tensors lack: those are never cached), and equal quantizer settings.

    Example:
        >>> import torch
        >>> cache, x = ActivationCodeCache(), torch.ones(2)
        >>> cache.store(x, "settings", None, "codes"); cache.lookup(x, "settings", None)
        'codes'
        >>> _ = x.add_(1); cache.lookup(x, "settings", None) is None  # changed in place: a miss
        True
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget the cached activation (and release it)."""
        # One tuple, replaced whole: a model run from two threads can never pair one tensor with
        # another's codes (a single attribute store is atomic).
        self._entry: tuple | None = None

    @staticmethod
    def _version_of(x: torch.Tensor) -> int | None:
        try:
            return x._version
        except RuntimeError:  # an inference-mode tensor: no counter, so no proof it is unchanged
            return None

    def lookup(self, x: torch.Tensor, key: object, smoothing: torch.Tensor | None) -> object:
        """The stored value if `x` is the cached tensor, unmodified, under equal settings.

        Args:
            x: the layer input.
            key: the quantizer settings that decide the codes (hashable, compared with ==).
            smoothing: per-input-channel divisor applied before quantizing, or None.

        Returns:
            What `store` was given, or None on a miss.
        """
        entry = self._entry
        if entry is None:
            return None
        cached_x, version, cached_key, cached_smoothing, value = entry
        if cached_x is not x or cached_key != key or version != self._version_of(x):
            return None
        if (smoothing is None) != (cached_smoothing is None):
            return None
        if smoothing is not None and not torch.equal(smoothing, cached_smoothing):
            return None
        return value

    def store(self, x: torch.Tensor, key: object, smoothing: torch.Tensor | None, value: object) -> None:
        """Remember `value` for `x`, replacing the previous entry.

        Args:
            x: the layer input (kept alive until the next `store` or `clear`); nothing is stored for
                tensors without a version counter.
            key, smoothing: as for `lookup`.
            value: the codes and qparams to hand back.
        """
        version = self._version_of(x)
        if version is not None:
            self._entry = (x, version, key, smoothing, value)


class Int8Linear(nn.Module):
    """W8A8 Linear on integer arithmetic: quantize the input, int8 GEMM, int32 offsets, one rescale.

    Args:
        layer: a frozen `QuantLinear` with symmetric int8 weights and an int8 / uint8 input
            quantizer (static per tensor, or dynamic per token / per tensor).

    Attributes:
        path: a short description of what the layer runs (shown by the engine).
        bias_mode: "int32" (static: bias quantized at `s_x * s_w`), "float" (added after the
            rescale) or "none".

    Example:
        >>> import torch, quantpilot as qp
        >>> qm = qp.quantize(torch.nn.Sequential(torch.nn.Linear(16, 4)))
        >>> with qp.calibrate(qm):
        ...     _ = qm(torch.randn(32, 16))
        >>> layer = Int8Linear(qp.freeze(qm)[0])
        >>> layer.bias_mode, layer(torch.randn(2, 16)).shape
        ('int32', torch.Size([2, 4]))
    """

    def __init__(self, layer: QuantLinear) -> None:
        super().__init__()
        reason = form_problem(layer, INT8_GEMM)
        if reason is not None:
            raise ValueError(f"Int8Linear cannot serve this layer: {reason}")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        quantizer = layer.input_quantizer
        self.input_spec: QuantSpec = quantizer.spec
        self.dynamic = quantizer.dynamic
        self.per_token = isinstance(self.input_spec.granularity, PerToken)
        # uint8 codes become int8 by subtracting 128 (an exact xor of the sign bit); zp moves with them.
        self.uint8_shift = self.input_spec.dtype is QuantDtype.UINT8
        # Symmetric int8 has zp 0; symmetric uint8 has zp 128, which the shift also turns into 0.
        self.needs_zero_point = not self.input_spec.symmetric
        self.register_buffer("input_smoothing", input_smoothing(layer))
        self.register_buffer("weight_int", layer.weight_codes())
        self.register_buffer("weight_scale", per_channel_weight_scale(layer))
        row_sum = self.weight_int.sum(dim=1, dtype=torch.int32)
        self.register_buffer("weight_row_sum", row_sum)
        bias = None if layer.bias is None else layer.bias.detach().float()
        self.register_buffer("offset", None)  # static only: int32 b_q - zp_x * R, per output channel
        self.register_buffer("out_scale", None)  # static only: s_x * s_w[n]
        self.register_buffer("bias", bias)
        self.bias_mode = "none" if bias is None else "float"
        if not self.dynamic:
            self._fold_static(quantizer.scale, quantizer.zero_point, bias)
        # What makes two layers' codes for one input identical (see ActivationCodeCache).
        static = () if self.dynamic else (float(self.input_scale), int(self.input_zero_point))
        self.code_key = (self.input_spec, self.dynamic, static)
        self.code_cache: ActivationCodeCache | None = None
        mode = "per-token" if self.per_token else "per-tensor"
        kind = f"{'dynamic' if self.dynamic else 'static'} {mode} {'' if self.input_spec.symmetric else 'a'}symmetric"
        self.path = f"int8 GEMM, {kind} {self.input_spec.dtype.value} input, bias {self.bias_mode}"

    def _fold_static(self, scale: torch.Tensor, zero_point: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Precompute the static rescale and the int32 offset `b_q - zp_x * R` (see the module docstring)."""
        self.register_buffer("input_scale", scale.detach().float().reshape(()))
        self.register_buffer("input_zero_point", zero_point.detach().to(torch.int32).reshape(()))
        zp = int(self.input_zero_point) - (128 if self.uint8_shift else 0)
        out_scale = self.input_scale * self.weight_scale
        offset = -zp * self.weight_row_sum.to(torch.int64)
        if bias is not None:
            # int32 has no QuantSpec, so this is the one rounding done here: half-to-even like
            # primitives.quantize, in float64 so the quotient itself is not rounded first.
            bias_q = torch.round(bias.double() / out_scale.double())
            bound = MAX_ACT_CODE * abs_row_sum(self.weight_int) + (offset + bias_q).abs()
            if bool((bound <= INT32_MAX).all()):
                offset = offset + bias_q.to(torch.int64)
                self.bias, self.bias_mode = None, "int32"
            # else: a tiny s_x * s_w (e.g. an all-zero calibration range) would overflow int32; keep the bias float.
        self.out_scale = out_scale
        self.offset = offset.to(torch.int32) if bool(offset.ne(0).any()) else None

    def _codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """int8 codes of the input, with the scale and (int8-domain) zero point they were made with."""
        if self.input_smoothing is not None:
            x = x / self.input_smoothing.to(x.dtype)
        spec = self.input_spec
        if self.dynamic:
            scale, zero_point = choose_qparams(*min_max(x, spec), spec)
        else:
            scale, zero_point = self.input_scale, self.input_zero_point
        codes = quantize(x, scale, zero_point, spec)
        if self.uint8_shift:
            codes = codes.view(torch.int8).bitwise_xor_(-128)
            zero_point = zero_point - 128
        return codes, scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cache = self.code_cache
        found = None if cache is None else cache.lookup(x, self.code_key, self.input_smoothing)
        if found is None:
            found = self._codes(x)
            if cache is not None:
                cache.store(x, self.code_key, self.input_smoothing, found)
        codes, scale, zero_point = found
        lead = x.shape[:-1]
        acc = int8_matmul(codes.reshape(-1, self.in_features), self.weight_int.t())
        # Integer corrections first, in int32: the zero-point cross term and, static, the int32 bias.
        if self.per_token and self.needs_zero_point:
            acc.addr_(zero_point.reshape(-1).to(torch.int32), self.weight_row_sum, alpha=-1)
        elif self.dynamic and self.needs_zero_point:
            acc.sub_(zero_point.to(torch.int32) * self.weight_row_sum)
        elif not self.dynamic and self.offset is not None:
            acc.add_(self.offset)
        # Then the accumulator becomes float32 in its own memory (same element size, each element read
        # before it is written) and the rescale runs in place. Mixed int32 * float32 ops would first
        # copy the accumulator to float on CPU, and each large fresh buffer costs page faults here.
        y = acc.view(torch.float32).copy_(acc)
        if self.per_token:
            y.mul_(self.weight_scale)
            out_scale = scale.reshape(-1, 1)  # the row scale: no M x N matrix of scales
        elif self.dynamic:
            out_scale = scale * self.weight_scale
        else:
            out_scale = self.out_scale
        y = y.mul_(out_scale) if self.bias is None else torch.addcmul(self.bias, y, out_scale, out=y)
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.path}"
