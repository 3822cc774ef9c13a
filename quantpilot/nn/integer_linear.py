"""Real-integer Linear layers built from a frozen `QuantLinear`: int8 GEMM and int8 weight-only.

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

The GEMM is `torch._int_mm`. On this PyTorch build (2.13, CPU) it accepts every 2-D int8 shape
(measured: M = 1, K = 7, N = 12 and K = 0 give exact results), unlike CUDA, which needs M > 16 and
K, N multiples of 8; but it misreads operands whose size-1 dimension has an unusual stride (e.g.
`W.t()` when in_features = 1), so such operands are copied to a dense layout first. Where `_int_mm`
does not fit, the same int32 accumulator comes from a float64 matmul of the codes, exact because
every partial sum is an integer far below 2**53.

`Int8WeightOnlyLinear` (W8A16) keeps activations float and dequantizes the int8 weight per call.
`torch.ops.aten._weight_int8pack_mm` exists on this build but measured 20-40x slower than a float
matmul at BERT shapes (4096 rows) on this CPU (AVX-512 VNNI, no AMX), and slower still at 8 rows,
so it is not used here. With bf16 activations and one row (LLM decode) it is ~2.5x faster than a
bf16 matmul, so `weight_only_kernels.WeightOnlyKernelLinear` (packed RTN / GPTQ / AWQ layers) uses
it for decode-sized batches; `to_integer` dispatches those layers there.

Example:
    >>> import torch, quantpilot as qp
    >>> qmodel = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(16, 4)), "int8-dynamic"))
    >>> layer = to_integer(qmodel[0])
    >>> type(layer).__name__, layer(torch.randn(3, 16)).shape
    ('Int8Linear', torch.Size([3, 4]))
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..primitives import choose_qparams, dequantize, min_max, quantize
from ..spec import PerChannel, PerTensor, PerToken, QuantDtype, QuantSpec
from .linear import QuantLinear
from .packed import WeightOnlyEmbedding, WeightOnlyLinear
from .weight_only_kernels import WeightOnlyKernelLinear, kernel_problem

__all__ = [
    "ActivationCodeCache",
    "Int8Linear",
    "Int8WeightOnlyLinear",
    "int8_matmul",
    "int_mm_fits",
    "to_integer",
    "unsupported_reason",
]

_INT32_MAX = 2**31 - 1
# Largest |code| of an int8 activation after uint8 codes are shifted to int8: -128.
_MAX_ACT_CODE = 128


def int_mm_fits(m: int, k: int, n: int, device_type: str) -> bool:
    """Whether `torch._int_mm` accepts an (m, k) x (k, n) int8 product on this device.

    CPU accepts every shape on this build (checked by the tests); CUDA needs m > 16 and k, n
    positive multiples of 8; other devices have no `_int_mm` we rely on.

    Args:
        m, k, n: the product's sizes.
        device_type: `tensor.device.type`, e.g. "cpu" or "cuda".

    Returns:
        True where `_int_mm` can compute the product.

    Example:
        >>> int_mm_fits(1, 7, 3, "cpu"), int_mm_fits(16, 64, 64, "cuda"), int_mm_fits(32, 64, 64, "cuda")
        (True, False, True)
    """
    if device_type == "cpu":
        return True
    if device_type == "cuda":
        return m > 16 and k > 0 and k % 8 == 0 and n > 0 and n % 8 == 0
    return False


def _dense_layout(t: torch.Tensor) -> torch.Tensor:
    """`t` itself if it is plainly row-major, or column-major with both sizes > 1; else a row-major copy.

    CPU `_int_mm` reads operands whose size-1 dimension carries an unusual stride from the wrong
    place (measured on torch 2.13: `x @ W.t()` with in_features = 1 gives garbage, and so does a
    (1, K) operand with strides (1, 1)). Strides of size-1 dimensions are arbitrary in PyTorch, so
    anything but the two dense layouts is copied; the copy is tiny or never happens in a model.
    """
    rows, cols = t.shape
    if t.stride() == (cols, 1) or (rows > 1 and cols > 1 and t.stride() == (1, rows)):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int8 x int8 -> int32 matrix product `a @ b`.

    `torch._int_mm` where it fits (`int_mm_fits`), with operands in a dense layout it reads right;
    otherwise a float64 matmul of the codes, exact for any K below 2**53 / 128**2, giving the same
    int32 values.

    Args:
        a: `(M, K)` int8 codes.
        b: `(K, N)` int8 codes (a transposed view is fine).

    Returns:
        `(M, N)` int32 accumulator.

    Example:
        >>> import torch
        >>> a = torch.tensor([[1, -2, 3]], dtype=torch.int8)
        >>> int8_matmul(a, a.t()).tolist()
        [[14]]
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8 or a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"int8_matmul needs two 2-D int8 tensors, got {a.dtype} {tuple(a.shape)} and {b.dtype}")
    if int_mm_fits(a.shape[0], a.shape[1], b.shape[1], a.device.type):
        try:
            return torch._int_mm(_dense_layout(a), _dense_layout(b))
        except RuntimeError:
            pass  # a build with stricter shape rules than we know of: the exact path below gives the same values
    return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int32)


def _abs_row_sum(weight_int: torch.Tensor) -> torch.Tensor:
    # Widen before abs: int8 abs(-128) wraps to -128.
    return weight_int.to(torch.int64).abs().sum(dim=1)


def _weight_problem(layer: QuantLinear) -> str | None:
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
    if not spec.symmetric or bool(layer.weight_zero_point.ne(0).any()):
        return "weights are asymmetric (zero point != 0): int8 GEMM here needs symmetric weights"
    # |acc - zp_x * R| <= 128 * sum|W| + 128 * |R| <= 256 * sum|W|: int32 must hold that.
    abs_rows = _abs_row_sum(layer.weight_codes())
    if abs_rows.numel() and 2 * _MAX_ACT_CODE * int(abs_rows.max()) > _INT32_MAX:
        return "the int32 accumulator could overflow (very large in_features)"
    return None


def _activation_problem(layer: QuantLinear) -> str | None:
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


def unsupported_reason(layer: nn.Module) -> str | None:
    """Why a quantized layer cannot run on the integer path, or None if it can.

    Served: frozen `QuantLinear` with symmetric int8 weights (per tensor or per output channel),
    and either int8 / uint8 activations (static per tensor, dynamic per token or per tensor) or
    float activations (weight-only); packed `WeightOnlyLinear` (int8 per channel, int4 in groups
    of 32-256) on PyTorch's weight-only kernels.

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
    if isinstance(layer, WeightOnlyLinear):
        return kernel_problem(layer)  # packed int8 / int4 from RTN, GPTQ, AWQ
    if isinstance(layer, WeightOnlyEmbedding):
        return "a packed embedding is a lookup, no matmul: it runs as is, dequantizing only the rows it gathers"
    if type(layer) is not QuantLinear:
        return f"{type(layer).__name__}: the integer path serves QuantLinear and WeightOnlyLinear layers only"
    if not layer.is_frozen and layer.weight_spec is not None:
        return "the layer is not frozen: call quantpilot.freeze(model) first"
    problem = _weight_problem(layer)
    if problem is None and layer.input_quantizer.spec is not None:
        problem = _activation_problem(layer)
    return problem


def to_integer(layer: QuantLinear | WeightOnlyLinear) -> nn.Module:
    """The integer module for a frozen `QuantLinear` (`Int8Linear`, or `Int8WeightOnlyLinear` for W8A16)
    or a packed `WeightOnlyLinear` from RTN / GPTQ / AWQ (`WeightOnlyKernelLinear`).

    Args:
        layer: a frozen `QuantLinear` that `unsupported_reason` accepts.

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
    reason = unsupported_reason(layer)
    if reason is not None:
        raise ValueError(f"this layer cannot run on the integer path: {reason}")
    if isinstance(layer, WeightOnlyLinear):
        return WeightOnlyKernelLinear(layer)
    if layer.input_quantizer.spec is None:
        return Int8WeightOnlyLinear(layer)
    return Int8Linear(layer)


def _input_smoothing(layer: QuantLinear) -> torch.Tensor | None:
    # SmoothQuant's per-input-channel divisor, applied before the input quantizer when a layer has one;
    # read with getattr so layers saved before that buffer existed still convert.
    smoothing = getattr(layer, "input_smoothing", None)
    return None if smoothing is None else smoothing.detach().float().clone()


def _per_channel_weight_scale(layer: QuantLinear) -> torch.Tensor:
    # A per-tensor weight scale is the per-channel case with every channel alike.
    return layer.weight_scale.float().reshape(-1).expand(layer.out_features).contiguous()


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
        reason = unsupported_reason(layer)
        if reason is None and layer.input_quantizer.spec is None:
            reason = "the input is float (weight-only): use Int8WeightOnlyLinear"
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
        self.register_buffer("input_smoothing", _input_smoothing(layer))
        self.register_buffer("weight_int", layer.weight_codes())
        self.register_buffer("weight_scale", _per_channel_weight_scale(layer))
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
            bound = _MAX_ACT_CODE * _abs_row_sum(self.weight_int) + (offset + bias_q).abs()
            if bool((bound <= _INT32_MAX).all()):
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
        reason = unsupported_reason(layer)
        if reason is None and layer.input_quantizer.spec is not None:
            reason = "the input is quantized: use Int8Linear"
        if reason is not None:
            raise ValueError(f"Int8WeightOnlyLinear cannot serve this layer: {reason}")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        # The stored codes as dequantize sees them once a per-tensor scale is expanded per row.
        self.weight_spec = QuantSpec("int8", granularity=PerChannel(0))
        self.register_buffer("input_smoothing", _input_smoothing(layer))
        self.register_buffer("weight_int", layer.weight_codes())
        self.register_buffer("weight_scale", _per_channel_weight_scale(layer))
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
