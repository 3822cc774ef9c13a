"""The calibrator interface and the checks every calibrator shares (`quantpilot.calibrators` re-exports it)."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..primitives import choose_qparams
from ..spec import QuantSpec

META_DEVICE_MESSAGE = "calibration needs real data: the model is on the meta device; load its weights first"


def _check_batch(x: Any) -> torch.Tensor:
    """Validate one calibration batch and return it detached."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"calibration data must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"calibration data must be a floating-point tensor, got dtype {x.dtype}; convert it with .float()"
        )
    if x.is_meta:
        # A meta tensor has a shape and no values (a model built under `torch.device("meta")` or
        # accelerate's `init_empty_weights`): any range taken from it would be invented.
        raise ValueError(META_DEVICE_MESSAGE)
    if x.numel() == 0:
        raise ValueError("calibration data is an empty tensor; pass a batch with at least one value")
    return x.detach()


def _check_finite(*bounds: torch.Tensor) -> None:
    """NaN and Inf propagate into min/max, so checking the reduced bounds checks the whole batch cheaply."""
    if not all(bool(torch.isfinite(b).all()) for b in bounds):
        raise ValueError(
            "calibration data contains NaN or Inf; fix the model or the inputs that produce them "
            "(a range cannot be chosen from non-finite values)"
        )


def _reject_dynamic(spec: QuantSpec, name: str) -> None:
    if spec.is_dynamic:
        raise ValueError(
            f"{name} cannot calibrate a PerToken() spec: per-token ranges come from each batch at run time; "
            "use dynamic quantization (TensorQuantizer(spec, dynamic=True)) instead of a calibrator"
        )


class Calibrator(ABC):
    """Base class: validation, qparams and the error for a range asked before any data.

    Subclasses implement `collect`, `reset`, `has_data`, `_range`, `merge`, `state_dict`
    and `load_state_dict`.

    Args:
        spec: the scheme the range is chosen for.

    Example:
        >>> from quantpilot import QuantSpec
        >>> from quantpilot.calibrators import MinMax
        >>> issubclass(MinMax, Calibrator)
        True
    """

    kind: ClassVar[str] = ""

    def __init__(self, spec: QuantSpec) -> None:
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a quantpilot.QuantSpec, got {type(spec).__name__}")
        _reject_dynamic(spec, type(self).__name__)
        self.spec = spec

    @classmethod
    def option_names(cls) -> list[str]:
        """Keyword options the constructor takes besides `spec` (what `build_calibrator` accepts).

        Returns:
            The option names, in signature order.

        Example:
            >>> from quantpilot.calibrators import MovingAverageMinMax
            >>> MovingAverageMinMax.option_names()
            ['momentum']
        """
        params = list(inspect.signature(cls.__init__).parameters)
        return [p for p in params if p not in ("self", "spec")]

    def settings(self) -> dict[str, Any]:
        """The constructor options, which two calibrators must share to be merged.

        Returns:
            A dict of option name to value.

        Example:
            >>> from quantpilot import QuantSpec
            >>> from quantpilot.calibrators import Histogram
            >>> Histogram(QuantSpec(), method="mse").settings()["method"]
            'mse'
        """
        return {name: getattr(self, name) for name in self.option_names()}

    @property
    @abstractmethod
    def has_data(self) -> bool:
        """True once at least one batch was collected (or merged/loaded in)."""

    @abstractmethod
    def collect(self, x: torch.Tensor) -> None:
        """Update the statistics with one batch."""

    @abstractmethod
    def reset(self) -> None:
        """Forget all statistics."""

    @abstractmethod
    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The range, once `has_data` is known to be true."""

    @abstractmethod
    def _merge(self, other: Calibrator) -> None:
        """Fold in `other`'s statistics (both have data and compatible settings)."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The statistics as plain tensors."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> Calibrator:
        """Replace the statistics with those of `state_dict()`."""

    def compute_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The float range to quantize over.

        Returns:
            `(min_val, max_val)` float32 tensors shaped by the granularity; `min_val == -max_val`
            for a symmetric spec.

        Raises:
            ValueError: no data was collected yet.
        """
        if not self.has_data:
            raise ValueError(
                f"{type(self).__name__} has seen no data: call collect(batch) on calibration data "
                "before compute_range() or qparams()"
            )
        return self._range()

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point for the calibrated range (`primitives.choose_qparams`).

        Returns:
            `(scale, zero_point)`: float32 and int32 tensors shaped by the granularity.
        """
        return choose_qparams(*self.compute_range(), self.spec)

    def merge(self, other: Calibrator) -> Calibrator:
        """Fold in the statistics of a calibrator of the same type, spec and settings, in place.

        Args:
            other: the calibrator whose statistics are added; it is not modified.

        Returns:
            self.

        Raises:
            ValueError: the two differ in type, spec or settings.
        """
        if type(other) is not type(self):
            raise ValueError(
                f"cannot merge a {type(other).__name__} into a {type(self).__name__}; "
                "merge calibrators of the same type only"
            )
        if other.spec != self.spec:
            raise ValueError(
                f"cannot merge calibrators with different specs ({self.spec} vs {other.spec}); "
                "build both from the same QuantSpec"
            )
        if other.settings() != self.settings():
            raise ValueError(
                f"cannot merge calibrators with different settings ({self.settings()} vs {other.settings()}); "
                "build both with the same options"
            )
        if other.has_data:
            if self.has_data:
                self._merge(other)
            else:
                self.load_state_dict(other.state_dict())
        return self

    def _symmetric(self, mn: torch.Tensor, mx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A symmetric spec quantizes over [-amax, amax]; an asymmetric one over the data's [min, max]."""
        if not self.spec.symmetric:
            return mn, mx
        amax = torch.maximum(-mn, mx)
        return -amax, amax

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({self.spec}{', ' if opts else ''}{opts})"


def _check_state_keys(state: Any, expected: set[str], who: str) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"{who}.load_state_dict expects a dict of tensors, got {type(state).__name__}")
    if set(state) != expected:
        raise ValueError(f"{who}.load_state_dict expects keys {sorted(expected)}, got {sorted(state)}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{who} state '{key}' must be a tensor, got {type(value).__name__}")
