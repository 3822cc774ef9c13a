"""The single source of numerical truth: ranges -> qparams -> quantize / dequantize.

Every quantized module, calibrator, exporter and engine in quantpilot goes through these
functions, so their conventions are the project's conventions:

* rounding is half-to-even (`torch.round`), as ONNX QuantizeLinear and PyTorch's
  fake-quantize ops do, and values are divided by the scale (ONNX's definition);
* the range always contains 0.0 and an asymmetric zero point is rounded so 0.0 is exactly
  representable (padding and ReLU zeros stay exact);
* a degenerate range (all zeros) gets the smallest positive scale PyTorch's observers use,
  never a division by zero;
* scales are float32, zero points int32; their shapes follow the granularity:
  per tensor `()`, per channel `(C,)`, per group `x.shape[:-1] + (L // size,)`,
  per token `x.shape[:-1]`.

Example:
    >>> import torch
    >>> from quantpilot import QuantSpec
    >>> from quantpilot.primitives import min_max, choose_qparams, quantize, dequantize
    >>> spec = QuantSpec("int8")
    >>> x = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    >>> scale, zp = choose_qparams(*min_max(x, spec), spec)
    >>> dequantize(quantize(x, scale, zp, spec), scale, zp, spec).tolist()[1]
    0.0
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .spec import PerChannel, PerGroup, PerTensor, PerToken, QuantSpec

__all__ = [
    "min_max",
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
    "representable_range",
    "SCALE_EPS",
]

# PyTorch's observers clamp scales to float32 eps; using the same floor keeps our qparams
# bit-identical to theirs and turns an all-zero range into a valid (tiny) scale.
SCALE_EPS = float(torch.finfo(torch.float32).eps)


def _check_spec(spec: QuantSpec) -> None:
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a quantpilot.QuantSpec, got {type(spec).__name__}")


def _check_float_tensor(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; convert it with .float()")


def _channel_axis(g: PerChannel, ndim: int) -> int:
    if not -ndim <= g.axis < ndim:
        raise ValueError(f"PerChannel(axis={g.axis}) is out of range for a tensor with {ndim} dims")
    return g.axis % ndim


def _group_count(g: PerGroup, shape: torch.Size) -> int:
    if len(shape) == 0 or shape[-1] % g.size != 0:
        last = shape[-1] if len(shape) else "a scalar"
        raise ValueError(
            f"PerGroup(size={g.size}) needs the last dimension to be a multiple of {g.size}, got {last}; "
            "pick a group size that divides it"
        )
    return shape[-1] // g.size


def min_max(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce `x` to the (min, max) pair that the spec's granularity needs.

    Args:
        x: a floating-point tensor with at least one element.
        spec: the scheme whose granularity decides the reduction.

    Returns:
        `(min_val, max_val)` float32 tensors shaped like the scales `choose_qparams` returns.

    Example:
        >>> import torch
        >>> from quantpilot import QuantSpec, PerChannel
        >>> mn, mx = min_max(torch.tensor([[1.0, -2.0], [3.0, 4.0]]), QuantSpec(granularity=PerChannel(0)))
        >>> mn.tolist(), mx.tolist()
        ([-2.0, 3.0], [1.0, 4.0])
    """
    _check_spec(spec)
    _check_float_tensor(x, "x")
    if x.numel() == 0:
        raise ValueError("cannot compute a range from an empty tensor; pass at least one value")
    x = x.detach().float()
    g = spec.granularity
    # amin + amax rather than torch.aminmax: the fused op is ~20x slower on this CPU build.
    if isinstance(g, PerTensor):
        return x.amin(), x.amax()
    if isinstance(g, PerChannel):
        axis = _channel_axis(g, x.dim())
        flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        return flat.amin(dim=1), flat.amax(dim=1)
    if isinstance(g, PerGroup):
        groups = _group_count(g, x.shape)
        grouped = x.reshape(*x.shape[:-1], groups, g.size)
        return grouped.amin(dim=-1), grouped.amax(dim=-1)
    if x.dim() == 0:
        raise ValueError("PerToken() needs a tensor with a last (feature) dimension, got a scalar")
    return x.amin(dim=-1), x.amax(dim=-1)


def choose_qparams(
    min_val: torch.Tensor | float, max_val: torch.Tensor | float, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map the float range [min_val, max_val] onto the spec's grid.

    Symmetric: `scale = amax / ((qmax - qmin) / 2)` (amax/127.5 for full-range int8, amax/127
    for narrow range) and zero point 0 (the middle code for unsigned formats), as PyTorch's
    observers compute it. Asymmetric: `scale = (max - min) / (qmax - qmin)` over the range
    extended to contain 0, zero point `qmin - round(min / scale)`. fp8: `scale = amax / fp_max`.

    Args:
        min_val, max_val: range bounds, scalars or tensors shaped by the granularity.
        spec: the target scheme.

    Returns:
        `(scale, zero_point)`: float32 and int32 tensors of the bounds' shape.

    Example:
        >>> from quantpilot import QuantSpec
        >>> s, z = choose_qparams(-1.0, 3.0, QuantSpec("uint8", symmetric=False))
        >>> round(s.item(), 6), z.item()
        (0.015686, 64)
    """
    _check_spec(spec)
    mn = torch.as_tensor(min_val, dtype=torch.float32).detach()
    mx = torch.as_tensor(max_val, dtype=torch.float32).detach()
    if mn.shape != mx.shape:
        raise ValueError(f"min_val and max_val must have the same shape, got {tuple(mn.shape)} and {tuple(mx.shape)}")
    if not (torch.isfinite(mn).all() and torch.isfinite(mx).all()):
        raise ValueError("the range contains NaN or Inf; check the data the range was computed from")
    if bool((mn > mx).any()):
        raise ValueError("min_val is greater than max_val; pass (min, max) in that order")
    min_neg = torch.clamp(mn, max=0.0)
    max_pos = torch.clamp(mx, min=0.0)
    if spec.dtype.is_float:
        amax = torch.maximum(-min_neg, max_pos)
        scale = torch.clamp(amax / spec.fp_max, min=SCALE_EPS)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        amax = torch.maximum(-min_neg, max_pos)
        scale = torch.clamp(amax / (float(qmax - qmin) / 2), min=SCALE_EPS)
        mid = 0 if spec.dtype.is_signed else (qmin + qmax + 1) // 2
        zero_point = torch.full_like(scale, mid, dtype=torch.int32)
    else:
        scale = torch.clamp((max_pos - min_neg) / float(qmax - qmin), min=SCALE_EPS)
        zero_point = torch.clamp(qmin - torch.round(min_neg / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def _broadcaster(
    shape: torch.Size, param: torch.Tensor, spec: QuantSpec, name: str
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """How a qparam tensor lines up with data of `shape` under the spec's granularity.

    Returns `(view_x, unview_x, param_view)`: `view_x` reshapes data so `param_view` broadcasts
    over it, `unview_x` undoes that reshape.
    """
    g = spec.granularity
    identity = lambda t: t  # noqa: E731
    ndim = len(shape)
    if isinstance(g, PerTensor):
        if param.numel() != 1:
            raise ValueError(f"per-tensor {name} must have one element, got shape {tuple(param.shape)}")
        return identity, identity, param.reshape(())
    if isinstance(g, PerChannel):
        axis = _channel_axis(g, ndim)
        if param.shape != (shape[axis],):
            raise ValueError(
                f"per-channel {name} must have shape ({shape[axis]},) for axis {g.axis} of a {tuple(shape)} tensor, "
                f"got {tuple(param.shape)}"
            )
        view = [1] * ndim
        view[axis] = shape[axis]
        return identity, identity, param.reshape(view)
    if isinstance(g, PerGroup):
        groups = _group_count(g, shape)
        expected = tuple(shape[:-1]) + (groups,)
        if tuple(param.shape) != expected:
            raise ValueError(
                f"per-group {name} must have shape {expected} for a {tuple(shape)} tensor, got {tuple(param.shape)}"
            )
        grouped = tuple(shape[:-1]) + (groups, g.size)
        return (lambda t: t.reshape(grouped)), (lambda t: t.reshape(shape)), param.unsqueeze(-1)
    assert isinstance(g, PerToken)
    if ndim == 0 or tuple(param.shape) != tuple(shape[:-1]):
        raise ValueError(
            f"per-token {name} must have shape {tuple(shape[:-1])} for a {tuple(shape)} tensor, "
            f"got {tuple(param.shape)}"
        )
    return identity, identity, param.unsqueeze(-1)


def _exporting_qdq(spec: QuantSpec) -> bool:
    """True while torch.onnx exports a graph and the scheme has a standard ONNX Q/DQ form.

    Then quantize/dequantize are emitted as the PyTorch ops the exporter turns into
    QuantizeLinear / DequantizeLinear (int8/uint8, per tensor or per channel). Their ONNX
    semantics (divide, round half to even, saturate) are exactly ours.
    """
    return (
        torch.onnx.is_in_onnx_export()
        and spec.dtype.value in ("int8", "uint8")
        and isinstance(spec.granularity, PerTensor | PerChannel)
    )


def _qparams_views(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec):
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    zero_point = torch.as_tensor(zero_point, device=x.device)
    view, unview, scale_v = _broadcaster(x.shape, scale, spec, "scale")
    _, _, zp_v = _broadcaster(x.shape, zero_point, spec, "zero_point")
    if bool((scale <= 0).any()) or not bool(torch.isfinite(scale).all()):
        raise ValueError("scale must be positive and finite; compute it with choose_qparams")
    return view, unview, scale_v, zp_v


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Map floats to the spec's codes: `clamp(round(x / scale) + zero_point, qmin, qmax)`.

    Integer results are int8/uint8 tensors (int4/uint4 codes live in int8/uint8, unpacked);
    fp8 results are `torch.float8_e4m3fn` / `torch.float8_e5m2` after a saturating cast.

    Args:
        x: floating-point data.
        scale, zero_point: from `choose_qparams`, shaped by the spec's granularity.
        spec: the scheme.

    Returns:
        The quantized tensor, same shape as `x`.

    Example:
        >>> import torch
        >>> from quantpilot import QuantSpec
        >>> quantize(torch.tensor([0.5, 300.0]), torch.tensor(0.5), torch.tensor(0), QuantSpec()).tolist()
        [1, 127]
    """
    _check_spec(spec)
    _check_float_tensor(x, "x")
    view, unview, scale_v, zp_v = _qparams_views(x, scale, zero_point, spec)
    xs = view(x.float()) / scale_v
    if spec.dtype.is_float:
        # Saturate before the cast: torch's fp8 cast turns out-of-range values into NaN/Inf.
        return unview(torch.clamp(xs, -spec.fp_max, spec.fp_max)).to(spec.dtype.torch_dtype)
    # In place on the fresh quotient: one buffer instead of three on the activation hot path.
    xs.round_().add_(zp_v.to(torch.float32)).clamp_(spec.qmin, spec.qmax)
    return unview(xs).to(spec.dtype.torch_dtype)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Map codes back to floats: `(q - zero_point) * scale`.

    Args:
        q: codes from `quantize`.
        scale, zero_point: the qparams used to quantize.
        spec: the scheme.
        dtype: floating dtype of the result.

    Returns:
        A tensor of `dtype`, same shape as `q`.

    Example:
        >>> import torch
        >>> from quantpilot import QuantSpec
        >>> q = torch.tensor([1, 127], dtype=torch.int8)
        >>> dequantize(q, torch.tensor(0.5), torch.tensor(0), QuantSpec()).tolist()
        [0.5, 63.5]
    """
    _check_spec(spec)
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if _exporting_qdq(spec):
        return _export_dequantize(q, scale, zero_point, spec).to(dtype)
    view, unview, scale_v, zp_v = _qparams_views(q, scale, zero_point, spec)
    qf = view(q.to(torch.float32))
    out = qf * scale_v if spec.dtype.is_float else (qf - zp_v.to(torch.float32)) * scale_v
    return unview(out).to(dtype)


class _FakeQuantize(torch.autograd.Function):
    """quantize -> dequantize with straight-through and LSQ gradients.

    d/dx is 1 where the rounded value fell inside the grid and 0 where it was clamped (the STE
    of Bengio et al. / PyTorch's fake-quantize ops). When scale / zero point require grad, they
    get LSQ's gradients (Esser et al., 2020), scaled by `grad_factor`.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, spec: QuantSpec, grad_factor: float):
        view, unview, scale_v, zp_v = _qparams_views(x, scale.detach(), zero_point.detach(), spec)
        xv = view(x.float())
        xs = xv / scale_v
        if spec.dtype.is_float:
            lo, hi = -spec.fp_max, spec.fp_max
            inside = (xs >= lo) & (xs <= hi)
            q = torch.clamp(xs, lo, hi).to(spec.dtype.torch_dtype).float()
            zp_f = torch.zeros_like(scale_v)
            out = q * scale_v
        else:
            # A learnable zero point is a float; the grid needs an integer, rounded and kept in range.
            zp_f = torch.clamp(torch.round(zp_v.float()), spec.qmin, spec.qmax)
            rounded = torch.round(xs) + zp_f
            inside = (rounded >= spec.qmin) & (rounded <= spec.qmax)
            q = torch.clamp(rounded, spec.qmin, spec.qmax)
            out = (q - zp_f) * scale_v
        ctx.save_for_backward(xs, q, inside, scale_v, zp_f)
        ctx.meta = (spec, grad_factor, unview, scale.shape, zero_point.shape, x.dtype)
        return unview(out).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        xs, q, inside, scale_v, zp_f = ctx.saved_tensors
        spec, grad_factor, unview, scale_shape, zp_shape, x_dtype = ctx.meta
        g = grad_out.float().reshape(xs.shape)
        grad_x = unview(g * inside).to(x_dtype) if ctx.needs_input_grad[0] else None
        grad_scale = grad_zp = None
        if ctx.needs_input_grad[1]:
            # LSQ: d(out)/d(scale) = (q - zp) - x/s inside the grid (rounding error), the clamped code outside.
            d_scale = torch.where(inside, (q - zp_f) - xs, q - zp_f)
            grad_scale = _sum_to(g * d_scale * grad_factor, scale_v.shape).reshape(scale_shape)
        if ctx.needs_input_grad[2]:
            d_zp = torch.where(inside, torch.zeros_like(xs), -scale_v.expand_as(xs))
            grad_zp = _sum_to(g * d_zp * grad_factor, scale_v.shape).reshape(zp_shape)
        return grad_x, grad_scale, grad_zp, None, None


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast result back down to the parameter's broadcast shape."""
    return t.sum_to_size(shape) if len(shape) else t.sum()


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    spec: QuantSpec,
    grad_factor: float = 1.0,
) -> torch.Tensor:
    """Quantize then dequantize in one differentiable step (the QDQ pair of a QAT graph).

    The value equals `dequantize(quantize(x, ...), ...)` bit for bit. Gradients: straight-through
    for `x` (zero where values were clamped); if `scale` (and a float `zero_point`) require grad,
    they are learned with LSQ's gradient, multiplied by `grad_factor` (LSQ suggests
    `1 / sqrt(numel * qmax)`).

    Args:
        x: floating-point data (any float dtype; the result keeps it).
        scale, zero_point: qparams shaped by the granularity.
        spec: the scheme.
        grad_factor: multiplier for the scale / zero-point gradients.

    Returns:
        A tensor like `x` holding only representable values.

    Example:
        >>> import torch
        >>> from quantpilot import QuantSpec
        >>> x = torch.tensor([0.26, 9.0], requires_grad=True)
        >>> y = fake_quantize(x, torch.tensor(0.5), torch.tensor(0), QuantSpec("int4"))
        >>> y.tolist()
        [0.5, 3.5]
        >>> y.sum().backward(); x.grad.tolist()
        [1.0, 0.0]
    """
    _check_spec(spec)
    _check_float_tensor(x, "x")
    if _exporting_qdq(spec):
        return _export_fake_quantize(x, scale, zero_point, spec)
    scale_t = scale if isinstance(scale, torch.Tensor) else torch.tensor(scale, dtype=torch.float32)
    zp_t = zero_point if isinstance(zero_point, torch.Tensor) else torch.tensor(zero_point, dtype=torch.int32)
    return _FakeQuantize.apply(x, scale_t, zp_t, spec, float(grad_factor))


def _full_range(spec: QuantSpec) -> tuple[int, int]:
    # ONNX QuantizeLinear always saturates to the whole int8/uint8 range.
    return (-128, 127) if spec.dtype.is_signed else (0, 255)


def _export_fake_quantize(x, scale, zero_point, spec: QuantSpec) -> torch.Tensor:
    # The ops of PyTorch's own export flow (PT2E): they have fake kernels, so a graph with dynamic
    # batch / sequence axes traces (aten's fake_quantize ops do not), and the ONNX exporter turns
    # them into QuantizeLinear / DequantizeLinear. Per-tensor qparams must be Python numbers.
    if isinstance(spec.granularity, PerTensor) and (
        isinstance(scale, torch.Tensor) or isinstance(zero_point, torch.Tensor)
    ):
        raise ValueError("per-tensor QDQ export needs the scale and zero point as Python numbers")
    q = _export_quantize(x.float(), scale, zero_point, spec)
    return _export_dequantize(q, scale, zero_point, spec)


def _export_quantize(x, scale, zero_point, spec: QuantSpec) -> torch.Tensor:
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops)

    qmin, qmax = _full_range(spec)
    ops = torch.ops.quantized_decomposed
    if isinstance(spec.granularity, PerTensor):
        return ops.quantize_per_tensor(x, float(scale), int(zero_point), qmin, qmax, spec.dtype.torch_dtype)
    axis = _channel_axis(spec.granularity, x.dim())
    scale = torch.as_tensor(scale, dtype=torch.float32)
    return ops.quantize_per_channel(x, scale, torch.as_tensor(zero_point), axis, qmin, qmax, spec.dtype.torch_dtype)


def _export_dequantize(q, scale, zero_point, spec: QuantSpec) -> torch.Tensor:
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the quantized_decomposed ops)

    qmin, qmax = _full_range(spec)
    ops = torch.ops.quantized_decomposed
    if isinstance(spec.granularity, PerTensor):
        if isinstance(scale, torch.Tensor):
            scale, zero_point = float(scale), int(zero_point)
        return ops.dequantize_per_tensor(q, scale, zero_point, qmin, qmax, q.dtype)
    axis = _channel_axis(spec.granularity, q.dim())
    scale = torch.as_tensor(scale, dtype=torch.float32)
    return ops.dequantize_per_channel(q, scale, torch.as_tensor(zero_point), axis, qmin, qmax, q.dtype)


def representable_range(
    scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float interval the codes can express: `[(qmin - zp) * scale, (qmax - zp) * scale]`.

    Args:
        scale, zero_point: qparams of any granularity.
        spec: the scheme.

    Returns:
        `(low, high)` tensors shaped like `scale`.

    Example:
        >>> import torch
        >>> from quantpilot import QuantSpec
        >>> lo, hi = representable_range(torch.tensor(0.5), torch.tensor(0), QuantSpec(narrow_range=True))
        >>> lo.item(), hi.item()
        (-63.5, 63.5)
    """
    _check_spec(spec)
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if spec.dtype.is_float:
        return -spec.fp_max * scale, spec.fp_max * scale
    zp = torch.as_tensor(zero_point).to(torch.float32)
    return (spec.qmin - zp) * scale, (spec.qmax - zp) * scale
