"""`summary`: a per-layer table of what was quantized and how.

Example:
    >>> import torch, quantpilot as qp
    >>> qm = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "w8a16"))
    >>> print(qp.summary(qm))  # doctest: +ELLIPSIS
    layer  type         weights ...
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .nn import QuantModule
from .primitives import representable_range
from .spec import QuantSpec

__all__ = ["summary", "Summary", "LayerRow"]


@dataclass(frozen=True)
class LayerRow:
    """One quantized layer: its scheme, calibrator, input range and weight storage."""

    layer: str
    type: str
    weights: str
    activations: str
    calibrator: str
    input_range: str
    weight_bytes: int
    float_weight_bytes: int


class Summary(list):
    """A list of `LayerRow` that prints as an aligned table with totals.

    Example:
        >>> print(Summary([]))
        (no quantized layers)
    """

    def __str__(self) -> str:
        if not self:
            return "(no quantized layers)"
        headers = ["layer", "type", "weights", "activations", "calibrator", "input range", "weight KiB", "float KiB"]
        rows = [
            [
                r.layer,
                r.type,
                r.weights,
                r.activations,
                r.calibrator,
                r.input_range,
                f"{r.weight_bytes / 1024:.1f}",
                f"{r.float_weight_bytes / 1024:.1f}",
            ]
            for r in self
        ]
        total_q = sum(r.weight_bytes for r in self)
        total_f = sum(r.float_weight_bytes for r in self)
        rows.append(["total", "", "", "", "", "", f"{total_q / 1024:.1f}", f"{total_f / 1024:.1f}"])
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join(fmt.format(*line).rstrip() for line in [headers, *rows])


def _describe(spec: QuantSpec | None, dynamic: bool = False) -> str:
    if spec is None:
        return "float"
    kind = "sym" if spec.symmetric else "asym"
    narrow = "/narrow" if spec.narrow_range else ""
    gran = type(spec.granularity).__name__.removeprefix("Per").lower()
    return f"{spec.dtype.value} {kind}{narrow} per-{gran}" + (" dynamic" if dynamic else "")


def summary(model: nn.Module) -> Summary:
    """Per-layer table: weight and activation scheme, calibrator, fixed input range, weight size.

    Args:
        model: a quantized model (frozen or not).

    Returns:
        A `Summary` (a list of `LayerRow`); `print` it for the table.

    Example:
        >>> import torch, quantpilot as qp
        >>> rows = qp.summary(qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "int8-dynamic"))
        >>> rows[0].activations
        'int8 asym per-token dynamic'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rows = Summary()
    for name, m in model.named_modules():
        if not isinstance(m, QuantModule):
            continue
        q = m.input_quantizer
        if q.spec is None or q.dynamic:
            calibrator, rng = "-", "-"
        else:
            calibrator = ", ".join(f"{v}" for v in q.calibrator_config.to_dict().values())
            if q.scale is None:
                rng = "not calibrated"
            else:
                lo, hi = representable_range(q.scale, q.zero_point, q.spec)
                rng = f"[{lo.min().item():.4g}, {hi.max().item():.4g}]"
        if m.is_frozen:
            stored = sum(t.numel() * t.element_size() for t in (m.weight_int, m.weight_scale, m.weight_zero_point))
            numel = m.weight_int.numel()
        else:
            numel = m.weight.numel()
            stored = numel * m.weight.element_size()
        rows.append(
            LayerRow(
                layer=name,
                type=type(m).__name__,
                weights=_describe(m.weight_spec),
                activations=_describe(q.spec, q.dynamic),
                calibrator=calibrator,
                input_range=rng,
                weight_bytes=stored,
                float_weight_bytes=numel * 4,
            )
        )
    return rows
