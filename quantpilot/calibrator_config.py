"""`CalibratorConfig`: which calibrator picks a range, as plain data a recipe can hold.

It sits with `spec` at the bottom of the layers so that `Recipe` depends on nothing that computes;
`build` reaches the calibrators when a quantizer needs one.

Example:
    >>> CalibratorConfig.from_dict("histogram").kind
    'histogram'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .spec import QuantSpec

__all__ = ["CalibratorConfig"]


@dataclass(frozen=True)
class CalibratorConfig:
    """Which calibrator picks a range, and its options (e.g. `{"method": "percentile", "percentile": 99.99}`).

    Example:
        >>> CalibratorConfig("histogram", {"method": "entropy"}).kind
        'histogram'
    """

    kind: str = "minmax"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str):
            raise TypeError(f"calibrator kind must be a string such as 'minmax' or 'histogram', got {self.kind!r}")
        if not isinstance(self.options, dict):
            raise TypeError(f"calibrator options must be a mapping, got {type(self.options).__name__}")

    def build(self, spec: QuantSpec):
        """A fresh calibrator for `spec`.

        Example:
            >>> from quantpilot import QuantSpec
            >>> CalibratorConfig().build(QuantSpec()).has_data
            False
        """
        from .calibrators import build_calibrator  # the calibrators layer sits above the configuration

        return build_calibrator(spec, self.kind, **self.options)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form.

        Example:
            >>> CalibratorConfig().to_dict()
            {'kind': 'minmax'}
        """
        return {"kind": self.kind, **self.options}

    @classmethod
    def from_dict(cls, data: Any) -> CalibratorConfig:
        """Inverse of `to_dict`; a bare string names the kind.

        Example:
            >>> CalibratorConfig.from_dict({"kind": "histogram", "method": "mse"}).options
            {'method': 'mse'}
        """
        if isinstance(data, CalibratorConfig):
            return data
        if isinstance(data, str):
            return cls(data)
        if not isinstance(data, dict) or "kind" not in data:
            raise ValueError(f"a calibrator is a name or a mapping with a 'kind' key, got {data!r}")
        options = {k: v for k, v in data.items() if k != "kind"}
        return cls(data["kind"], options)
