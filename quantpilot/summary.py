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

from .nn import QuantModule, TensorQuantizer
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
    """A list of `LayerRow` that prints as an aligned table with totals and the share of weights quantized.

    Attributes:
        quantized_weights: weight elements stored quantized (each shared tensor counted once).
        total_weights: those plus the elements of every float weight matrix, stack or kernel left (parameters
            with two or more dimensions: biases and norms are not weights any method quantizes).

    Example:
        >>> print(Summary([]))
        (no quantized layers)
    """

    quantized_weights: int = 0
    total_weights: int = 0

    @property
    def quantized_share(self) -> float:
        """Fraction (0..1) of the model's weight elements that are stored quantized.

        Example:
            >>> Summary([]).quantized_share
            0.0
        """
        return self.quantized_weights / self.total_weights if self.total_weights else 0.0

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
        share = (
            f"quantized weights: {self.quantized_share:.1%} of the model's "
            f"({self.quantized_weights:,} of {self.total_weights:,} elements)"
        )
        return "\n".join([*(fmt.format(*line).rstrip() for line in [headers, *rows]), share])


def _describe(spec: QuantSpec | None, dynamic: bool = False) -> str:
    if spec is None:
        return "float"
    kind = "sym" if spec.symmetric else "asym"
    narrow = "/narrow" if spec.narrow_range else ""
    gran = type(spec.granularity).__name__.removeprefix("Per").lower()
    return f"{spec.dtype.value} {kind}{narrow} per-{gran}" + (" dynamic" if dynamic else "")


def summary(model: nn.Module) -> Summary:
    """Per-layer table: weight and activation scheme, calibrator, fixed input range, weight size.

    Every layer is read through the storage interface (`stored_weight_bytes`, `weight_numel`), so
    packed (RTN, GPTQ, AWQ, token tables) and LLM.int8() layers report like recipe layers. The
    last line gives the share of the model's weights stored quantized (`Summary.quantized_share`).

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
    seen: set[int] = set()
    for name, m in model.named_modules():
        if not isinstance(m, QuantModule):
            continue
        calibrator, rng = _input_range(m.input_quantizer)
        numel = m.weight_numel()
        # A head tied to the token table reads the table's codes: count those elements once.
        key = id(m.weight_storage()[0])
        if m.weight_spec is not None and key not in seen:
            seen.add(key)
            rows.quantized_weights += numel
        rows.append(
            LayerRow(
                layer=name,
                type=type(m).__name__,
                weights=_describe(m.weight_spec),
                activations=_describe(m.input_quantizer.spec, m.input_quantizer.dynamic),
                calibrator=calibrator,
                input_range=rng,
                weight_bytes=m.stored_weight_bytes(),
                float_weight_bytes=numel * 4,
            )
        )
    # Weight matrices (and stacks, conv kernels) still float, except the un-frozen quantized layers'
    # (counted above); biases and norms are left out as no method quantizes them, frozen or not.
    rows.total_weights = rows.quantized_weights + sum(
        p.numel() for p in model.parameters() if p.dim() >= 2 and id(p) not in seen
    )
    return rows


def _input_range(q: TensorQuantizer) -> tuple[str, str]:
    """(calibrator, fixed input range) of a layer's input quantizer, as the table prints them."""
    if q.spec is None or q.dynamic:
        return "-", "-"
    calibrator = ", ".join(f"{v}" for v in q.calibrator_config.to_dict().values())
    if q.scale is None:
        return calibrator, "not calibrated"
    lo, hi = representable_range(q.scale, q.zero_point, q.spec)
    return calibrator, f"[{lo.min().item():.4g}, {hi.max().item():.4g}]"
