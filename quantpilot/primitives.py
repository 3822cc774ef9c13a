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

from .qparams import (  # the range / qparams half; re-exported here, where they have always been imported from
    SCALE_EPS,
    _channel_axis,
    _check_float_tensor,
    _check_spec,
    _group_count,
    choose_qparams,
    min_max,
    representable_range,
)
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
