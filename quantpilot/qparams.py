"""Ranges and quantization parameters: min / max reduction, scale and zero point, representable range.

The first half of `quantpilot.primitives` (ranges -> qparams), which re-exports everything here; see its
docstring for the conventions (ranges contain 0.0, asymmetric zero points rounded so 0.0 is exact,
scales floored at `SCALE_EPS`, float32 scales and int32 zero points shaped by the granularity).

Example:
    >>> import torch
    >>> from quantpilot import QuantSpec
    >>> spec = QuantSpec("int8")
    >>> scale, zp = choose_qparams(*min_max(torch.tensor([-1.0, 0.0, 2.0]), spec), spec)
    >>> zp.item(), [round(v.item(), 4) for v in representable_range(scale, zp, spec)]
    (0, [-2.0078, 1.9922])
"""

from __future__ import annotations

import torch

from .spec import PerChannel, PerGroup, PerTensor, QuantSpec

__all__ = ["min_max", "choose_qparams", "representable_range", "SCALE_EPS"]

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
