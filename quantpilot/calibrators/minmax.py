"""Running min/max calibrators: `MinMax` and `MovingAverageMinMax` (`quantpilot.calibrators` re-exports them)."""

from __future__ import annotations

from abc import abstractmethod

import torch

from ..primitives import min_max
from ..spec import QuantSpec
from .base import Calibrator, _check_batch, _check_finite, _check_state_keys


class _RunningMinMax(Calibrator):
    """Shared state of the min/max calibrators: per-granularity min and max plus a batch count."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.reset()

    def reset(self) -> None:
        """Forget all statistics."""
        self.min_val = torch.empty(0)
        self.max_val = torch.empty(0)
        self.num_batches = 0

    @property
    def has_data(self) -> bool:
        """True once a batch was collected."""
        return self.num_batches > 0

    def _batch_min_max(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mn, mx = min_max(_check_batch(x), self.spec)
        _check_finite(mn, mx)
        mn, mx = mn.cpu(), mx.cpu()
        if self.has_data and mn.shape != self.min_val.shape:
            raise ValueError(
                f"this batch gives ranges of shape {tuple(mn.shape)} but earlier batches gave "
                f"{tuple(self.min_val.shape)}; per-channel / per-group calibration needs batches of the same layout"
            )
        return mn, mx

    @abstractmethod
    def _combine(self, other: _RunningMinMax) -> tuple[torch.Tensor, torch.Tensor]:
        """The merged (min_val, max_val) of two states with data and the same layout."""

    def _merge(self, other: Calibrator) -> None:
        if other.min_val.shape != self.min_val.shape:
            raise ValueError(
                f"cannot merge ranges of shape {tuple(other.min_val.shape)} into {tuple(self.min_val.shape)}; "
                "both calibrators must see tensors of the same layout"
            )
        self.min_val, self.max_val = self._combine(other)
        self.num_batches += other.num_batches

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        mn, mx = self.min_val, self.max_val
        # A moving average can leave min a rounding error above max (e.g. momentum 1 on a
        # nearly constant batch). Widening such a pair to include 0 keeps min <= max and gives
        # the qparams PyTorch's observer gives, since qparams only see min(min, 0), max(max, 0).
        crossed = mn > mx
        mn = torch.where(crossed, mn.clamp(max=0.0), mn)
        mx = torch.where(crossed, mx.clamp(min=0.0), mx)
        return self._symmetric(mn, mx)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The statistics as plain tensors: `min_val`, `max_val` and `num_batches`.

        Returns:
            A dict of tensors (`min_val`/`max_val` are empty before any data).
        """
        return {
            "min_val": self.min_val.clone(),
            "max_val": self.max_val.clone(),
            "num_batches": torch.tensor(self.num_batches, dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> Calibrator:
        """Replace the statistics with those of `state_dict()`.

        Args:
            state: a dict from `state_dict()` (possibly all-reduced).

        Returns:
            self.
        """
        who = type(self).__name__
        _check_state_keys(state, {"min_val", "max_val", "num_batches"}, who)
        if state["min_val"].shape != state["max_val"].shape:
            raise ValueError(f"{who} state: min_val and max_val must have the same shape")
        num = int(state["num_batches"])
        if num < 0 or (num > 0 and state["min_val"].numel() == 0):
            raise ValueError(
                f"{who} state: num_batches={num} does not match min_val of shape {tuple(state['min_val'].shape)}"
            )
        if num > 0:
            _check_finite(state["min_val"], state["max_val"])
        self.min_val = state["min_val"].detach().to("cpu", torch.float32).clone()
        self.max_val = state["max_val"].detach().to("cpu", torch.float32).clone()
        self.num_batches = num
        return self


class MinMax(_RunningMinMax):
    """The running minimum and maximum of everything collected.

    Per tensor, per channel (`PerChannel(axis)`) or per group (`PerGroup(size)`, batches of one
    layout). Merging is exact: the merged state equals one stream over both data sets.

    Args:
        spec: the scheme; `PerToken()` is refused (it is dynamic-only).

    Example:
        >>> import torch
        >>> from quantpilot import QuantSpec
        >>> cal = MinMax(QuantSpec("uint8", symmetric=False))
        >>> cal.collect(torch.tensor([-1.0, 3.0]))
        >>> [t.item() for t in cal.compute_range()], [t.item() for t in cal.qparams()][1]
        ([-1.0, 3.0], 64)
    """

    kind = "minmax"

    def collect(self, x: torch.Tensor) -> None:
        """Update the running min/max with one batch.

        Args:
            x: a non-empty floating-point tensor without NaN/Inf.
        """
        mn, mx = self._batch_min_max(x)
        if self.has_data:
            mn, mx = torch.minimum(self.min_val, mn), torch.maximum(self.max_val, mx)
        self.min_val, self.max_val = mn, mx
        self.num_batches += 1

    def _combine(self, other: _RunningMinMax) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.minimum(self.min_val, other.min_val), torch.maximum(self.max_val, other.max_val)


class MovingAverageMinMax(_RunningMinMax):
    """Exponential moving average of each batch's min and max (PyTorch's / Optimum's observer).

    The first batch initialises the state; every later one updates
    `state = state + momentum * (batch - state)` (PyTorch's `averaging_constant`), bit for bit
    as `torch.ao.quantization.MovingAverageMinMaxObserver` computes it. Outliers in a single
    batch therefore move the range only a little.

    An EMA depends on batch order, so two streams cannot be merged into exactly the state one
    stream would reach. `merge` treats each state as an estimate of the typical per-batch range
    and takes their average weighted by the number of batches each saw.

    Args:
        spec: the scheme (per tensor, per channel or per group).
        momentum: weight of the newest batch, in (0, 1]; 1 keeps only the last batch.

    Example:
        >>> import torch
        >>> from quantpilot import QuantSpec
        >>> cal = MovingAverageMinMax(QuantSpec(symmetric=False), momentum=0.5)
        >>> cal.collect(torch.tensor([0.0, 2.0])); cal.collect(torch.tensor([0.0, 4.0]))
        >>> cal.compute_range()[1].item()
        3.0
    """

    kind = "moving_average"

    def __init__(self, spec: QuantSpec, momentum: float = 0.01) -> None:
        if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum={momentum!r} must be a number in (0, 1], e.g. 0.01")
        self.momentum = float(momentum)
        super().__init__(spec)

    def collect(self, x: torch.Tensor) -> None:
        """Move the averaged min/max towards this batch's.

        Args:
            x: a non-empty floating-point tensor without NaN/Inf.
        """
        mn, mx = self._batch_min_max(x)
        if self.has_data:
            # Same expression and float32 arithmetic as PyTorch's observer, so results match bit for bit.
            mn = self.min_val + self.momentum * (mn - self.min_val)
            mx = self.max_val + self.momentum * (mx - self.max_val)
        self.min_val, self.max_val = mn, mx
        self.num_batches += 1

    def _combine(self, other: _RunningMinMax) -> tuple[torch.Tensor, torch.Tensor]:
        n1, n2 = self.num_batches, other.num_batches
        total = n1 + n2
        return (self.min_val * n1 + other.min_val * n2) / total, (self.max_val * n1 + other.max_val * n2) / total
