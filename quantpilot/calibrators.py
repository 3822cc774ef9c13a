"""Calibrators: pick the float range a tensor is quantized over, from the data it sees.

All calibrators share one interface:

* `collect(x)` feeds a batch (detached, under no_grad; any float dtype);
* `compute_range()` returns `(min_val, max_val)` float32 tensors shaped by the spec's
  granularity (as `primitives.min_max` returns them); for a symmetric spec `min_val == -max_val`;
* `qparams()` turns that range into `(scale, zero_point)` with `primitives.choose_qparams`;
* `merge(other)` folds in statistics gathered elsewhere (another process, another shard);
* `state_dict()` / `load_state_dict()` hold plain tensors, so statistics can travel between
  processes; `reset()` forgets everything.

The three kinds:

* `MinMax`: the running min and max (per tensor, per channel or per group);
* `MovingAverageMinMax`: an exponential moving average of each batch's min and max;
* `Histogram`: a histogram from which `entropy` (TensorRT's KL-divergence search), `mse`
  (least expected fake-quantization error) or `percentile` picks a clipping range.

Example:
    >>> import torch
    >>> from quantpilot import QuantSpec
    >>> from quantpilot.calibrators import build_calibrator
    >>> cal = build_calibrator(QuantSpec("int8"), "minmax")
    >>> cal.collect(torch.tensor([-1.0, 0.5])); cal.collect(torch.tensor([2.0]))
    >>> [t.item() for t in cal.compute_range()]
    [-2.0, 2.0]
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch

from .primitives import choose_qparams, fake_quantize, min_max, representable_range
from .spec import PerChannel, PerTensor, QuantSpec

__all__ = [
    "Calibrator",
    "MinMax",
    "MovingAverageMinMax",
    "Histogram",
    "CALIBRATORS",
    "build_calibrator",
]


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


# Narrowest bin width, as a power of two: 2**-126 is float32's smallest normal number, so the
# bin index x * 2**-k never overflows and the width itself stays representable.
_MIN_LOG2_WIDTH = -126
# float32 keeps 24 significant bits: bins narrower than amax * 2**-24 would split values that
# float32 cannot tell apart, and would make x / width overflow for a nearly constant signed tensor.
_MANTISSA_BITS = 24
_METHODS = ("entropy", "mse", "percentile")
_COLLECT_CHUNK = 2**18
# Fake-quantization points per histogram bin for the MSE estimate: the rounding error of a
# bin is averaged over these, not taken from its centre alone (which is wrong by up to a step).
_MSE_POINTS_PER_BIN = 4
# Thresholds the MSE search measures per round while it narrows its bracket.
_MSE_STEPS = 24
# Half-width of the first bracket around the modelled optimum, as a fraction of all thresholds.
_MSE_BRACKET = 0.15


class Histogram(Calibrator):
    """A histogram of the data, from which a clipping range is chosen (per tensor only).

    Symmetric specs histogram |x| (TensorRT's approach: one threshold `t`, range `[-t, t]`);
    asymmetric specs histogram signed values.

    Bins lie on a canonical grid: bin `j` covers `[j * w, (j + 1) * w)` where the width `w` is
    a power of two, the smallest one for which the data's range fits into `bins` bins. When a
    later batch lies outside the range, `w` doubles (adjacent bins are summed, since every edge
    of the `2w` grid is an edge of the `w` grid): no count is lost, and the histogram depends
    only on the data, never on batch order. `merge` brings both histograms to the wider grid and
    adds them, so a merge equals one stream exactly. The data spans between `bins / 2` and
    `bins` bins.

    Methods:

    * `"entropy"`: TensorRT's search for the threshold whose quantized distribution
      (as many levels as the spec has per side: 128 for int8) has the least KL divergence from
      the clipped one; ties go to the widest range. (NVIDIA's tool also overwrites the zero
      bin with its neighbour, a ReLU heuristic; this one uses the data as it is.)
    * `"mse"`: the threshold with the least expected fake-quantization error over the
      histogram: every threshold is scored with a model (uniform rounding noise inside the
      grid, clipping error outside), then those around the best are measured with
      `primitives.fake_quantize` at several points per bin (fp8: a narrowing search, all
      measured).
    * `"percentile"`: the `percentile`-th percentile of |x| (symmetric) or the two tails of
      `(100 - percentile) / 2` percent each (asymmetric), interpolated inside its bin.

    For asymmetric specs, entropy and MSE search windows `[max(min, -t), min(max, t)]` (like
    ONNX Runtime's calibrator), quantized with all of the spec's levels.

    Args:
        spec: a `PerTensor()` scheme.
        method: "entropy", "mse" or "percentile" ("entropy" assumes a uniform integer grid and
            is refused for fp8; use "mse" there).
        percentile: for method "percentile", in (0, 100].
        bins: how many bins the histogram has, at least 256.

    Example:
        >>> import torch
        >>> from quantpilot import QuantSpec
        >>> cal = Histogram(QuantSpec("int8"), method="percentile", percentile=99.0)
        >>> cal.collect(torch.linspace(-1.0, 1.0, 10001))
        >>> round(cal.compute_range()[1].item(), 3)
        0.99
    """

    kind = "histogram"

    def __init__(self, spec: QuantSpec, method: str = "entropy", percentile: float = 99.99, bins: int = 2048) -> None:
        if method not in _METHODS:
            raise ValueError(f"unknown histogram method {method!r}; use one of: {', '.join(_METHODS)}")
        if isinstance(percentile, bool) or not isinstance(percentile, int | float) or not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile={percentile!r} must be a number in (0, 100], e.g. 99.99")
        if isinstance(bins, bool) or not isinstance(bins, int) or not 256 <= bins <= 2**22:
            raise ValueError(f"bins={bins!r} must be an integer between 256 and 4194304, e.g. 2048")
        if isinstance(spec, QuantSpec) and not isinstance(spec.granularity, PerTensor) and not spec.is_dynamic:
            raise ValueError(
                f"Histogram calibrates one range per tensor, not {spec.granularity}; use QuantSpec(granularity="
                "PerTensor()) for activations, or MinMax / MovingAverageMinMax for per-channel or per-group ranges"
            )
        if isinstance(spec, QuantSpec) and method == "entropy" and spec.dtype.is_float:
            raise ValueError(
                f"method='entropy' models a uniform integer grid and does not fit {spec.dtype.value}; "
                "use method='mse' (or 'percentile') for fp8"
            )
        self.method = method
        self.percentile = float(percentile)
        self.bins = bins
        super().__init__(spec)
        # The MSE search scores many candidate ranges in one call: one "channel" per candidate.
        self._per_candidate_spec = replace(spec, granularity=PerChannel(0))
        self.reset()

    # -- statistics ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget all statistics."""
        self._counts = torch.zeros(self.bins, dtype=torch.int64)
        self._origin = 0  # grid index of counts[0]
        self._log2_width = _MIN_LOG2_WIDTH
        self._min = math.inf
        self._max = -math.inf

    @property
    def has_data(self) -> bool:
        """True once a batch was collected."""
        return self._min <= self._max

    @property
    def _abs(self) -> bool:
        return self.spec.symmetric

    @property
    def bin_width(self) -> float:
        """Width of one bin (a power of two; it grows as wider data arrives).

        Example:
            >>> import torch
            >>> from quantpilot import QuantSpec
            >>> cal = Histogram(QuantSpec(), bins=256); cal.collect(torch.tensor([1.0]))
            >>> cal.bin_width
            0.0078125
        """
        return math.ldexp(1.0, self._log2_width)

    def histogram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The counts of the occupied bins and their edges (of |x| for symmetric specs).

        Returns:
            `(counts, edges)`: int64 counts and float64 edges, one more edge than counts.

        Example:
            >>> import torch
            >>> from quantpilot import QuantSpec
            >>> cal = Histogram(QuantSpec(symmetric=False), bins=256)
            >>> cal.collect(torch.tensor([-1.0, 0.0, 1.0]))
            >>> counts, edges = cal.histogram(); int(counts.sum()), edges[0].item(), edges[-1].item()
            (3, -1.0, 1.015625)
        """
        if not self.has_data:
            raise ValueError("Histogram has seen no data: call collect(batch) first")
        first, last = self._occupied()
        edges = (torch.arange(first, last + 1, dtype=torch.float64) + self._origin) * self.bin_width
        return self._counts[first:last].clone(), edges

    def _occupied(self) -> tuple[int, int]:
        """Local indices [first, last) of the bins that hold data (from 0 for |x|, since 0 is its edge)."""
        nz = np.flatnonzero(self._counts.numpy())
        first = 0 if self._abs else int(nz[0])
        return first, int(nz[-1]) + 1

    def _grid_bounds(self, mn: float, mx: float) -> tuple[float, float]:
        return (0.0, max(-mn, mx)) if self._abs else (mn, mx)

    def _choose_grid(self, mn: float, mx: float, log2_width: int) -> tuple[int, int]:
        """The smallest power-of-two width (not below `log2_width`) whose grid fits [mn, mx] in `bins` bins.

        Returns `(log2_width, origin)`. The result depends only on the bounds (the starting width
        only shortens the search, as the answer for wider data is never narrower), which is what
        makes the histogram independent of batch order.
        """
        lo, hi = self._grid_bounds(mn, mx)
        amax = max(-lo, hi)
        k = max(log2_width, _MIN_LOG2_WIDTH)
        if amax > 0:
            k = max(k, math.frexp(amax)[1] - _MANTISSA_BITS)
        # Exact in float64: the bounds are float32 values and scaling by 2**-k only shifts the exponent.
        while math.floor(math.ldexp(hi, -k)) - math.floor(math.ldexp(lo, -k)) + 1 > self.bins:
            k += 1
        return k, math.floor(math.ldexp(lo, -k))

    def _rebinned(self, log2_width: int, origin: int) -> torch.Tensor:
        """This histogram's counts on a grid of width 2**log2_width (not narrower) starting at `origin`."""
        if (log2_width, origin) == (self._log2_width, self._origin):
            return self._counts.clone()
        # Bins merge by integer floor-division of their grid index: every edge of the coarser
        # grid is an edge of the finer one, so each old bin falls entirely into one new bin.
        shift = min(log2_width - self._log2_width, 62)
        old = torch.arange(self.bins, dtype=torch.int64) + self._origin
        new = torch.div(old, 2**shift, rounding_mode="floor") - origin
        keep = self._counts > 0
        return torch.zeros(self.bins, dtype=torch.int64).index_add_(0, new[keep], self._counts[keep])

    def collect(self, x: torch.Tensor) -> None:
        """Add one batch to the histogram, widening the bins if it reaches outside the range so far.

        Args:
            x: a non-empty floating-point tensor without NaN/Inf.
        """
        x = _check_batch(x)
        with torch.no_grad():
            flat = x.reshape(-1).float()
            bmin, bmax = (float(b) for b in torch.aminmax(flat))
            if not (math.isfinite(bmin) and math.isfinite(bmax)):
                _check_finite(torch.tensor([bmin, bmax]))  # raises with the shared message
            mn, mx = min(self._min, bmin), max(self._max, bmax)
            k, origin = self._choose_grid(mn, mx, self._log2_width)
            if self.has_data:
                self._counts = self._rebinned(k, origin)
            self._log2_width, self._origin, self._min, self._max = k, origin, mn, mx
            # Chunks of a few hundred thousand values keep the temporaries in cache: about 20 %
            # faster than one pass over a 1.5M-value activation.
            for chunk in flat.split(_COLLECT_CHUNK):
                self._counts += torch.bincount(self._grid_index(chunk), minlength=self.bins).cpu()

    def _grid_index(self, flat: torch.Tensor) -> torch.Tensor:
        """Local bin index of every value (non-negative, below `bins`) on the current grid."""
        # x * 2**-k is exact (a power-of-two scale), so floor gives the true grid index.
        k = self._log2_width
        inv_width = math.ldexp(1.0, -k)
        # Local indices are below `bins`: the narrowest integer type that holds them converts
        # and counts fastest (int16 for the default 2048 bins).
        dtype = torch.int16 if self.bins <= 2**15 else torch.int32
        if self._abs:
            # |x| / w >= 0, so the integer conversion's truncation already is the floor.
            return flat.abs().mul_(inv_width).to(dtype)
        if k <= 0:
            scaled = (flat * inv_width).floor_()
        else:
            # Shrinking by 2**-k can flush a tiny negative value to -0.0 in float32, whose
            # floor is bin 0 instead of -1; float64's wider exponent range cannot underflow.
            scaled = flat.to(torch.float64).mul_(inv_width).floor_()
        # Grid index and origin are integers below 2**24 in magnitude (see _choose_grid), so the
        # float subtraction is exact and leaves the small local index.
        return scaled.sub_(self._origin).to(dtype)

    def _merge(self, other: Calibrator) -> None:
        mn, mx = min(self._min, other._min), max(self._max, other._max)
        k, origin = self._choose_grid(mn, mx, max(self._log2_width, other._log2_width))
        self._counts = self._rebinned(k, origin) + other._rebinned(k, origin)
        self._log2_width, self._origin, self._min, self._max = k, origin, mn, mx

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The statistics as plain tensors.

        Returns:
            `counts` (int64, `bins`), `origin` and `log2_width` (int64 scalars: bin `i` covers
            `[(origin + i) * 2**log2_width, ...)`), `min_val` / `max_val` (float32 scalars, the
            data's extremes; +inf / -inf before any data).
        """
        return {
            "counts": self._counts.clone(),
            "origin": torch.tensor(self._origin, dtype=torch.int64),
            "log2_width": torch.tensor(self._log2_width, dtype=torch.int64),
            "min_val": torch.tensor(self._min, dtype=torch.float32),
            "max_val": torch.tensor(self._max, dtype=torch.float32),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> Calibrator:
        """Replace the statistics with those of `state_dict()`.

        Args:
            state: a dict from `state_dict()` of a histogram with the same `bins`.

        Returns:
            self.
        """
        _check_state_keys(state, {"counts", "origin", "log2_width", "min_val", "max_val"}, "Histogram")
        counts = state["counts"].detach().to("cpu", torch.int64).flatten()
        if counts.numel() != self.bins or bool((counts < 0).any()):
            raise ValueError(f"Histogram state: counts must be {self.bins} non-negative integers (bins={self.bins})")
        mn, mx = float(state["min_val"]), float(state["max_val"])
        if (mn <= mx) != bool(counts.sum() > 0):
            raise ValueError("Histogram state: min_val/max_val do not agree with the counts (data without counts?)")
        self._counts = counts.clone()
        self._origin, self._log2_width = int(state["origin"]), int(state["log2_width"])
        self._min, self._max = mn, mx
        return self

    # -- range selection ----------------------------------------------------------------------
    # The searches below work on at most `bins` numbers, where numpy's per-call cost (a few us)
    # is far below torch's; the quantization math itself still goes through quantpilot.primitives.

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo_data, hi_data = self._grid_bounds(self._min, self._max)
        if hi_data == lo_data or max(-lo_data, hi_data) == 0.0:
            lo, hi = lo_data, hi_data
        elif self.method == "percentile":
            lo, hi = self._percentile_range()
        else:
            lo, hi = self._searched_range()
        if self._abs:
            # |x| was histogrammed: the threshold t gives [-t, t].
            t = torch.tensor(hi, dtype=torch.float32)
            return -t, t
        return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)

    def _quantile(self, cum: np.ndarray, fraction: float) -> float:
        """Value below which `fraction` of the counts lie, linear inside the bin that crosses it."""
        target = fraction * float(cum[-1])
        b = min(int(np.searchsorted(cum, target)), cum.size - 1)
        before = float(cum[b - 1]) if b > 0 else 0.0
        inside = float(cum[b]) - before
        frac = (target - before) / inside if inside > 0 else 0.0
        return (self._origin + b + frac) * self.bin_width

    def _percentile_range(self) -> tuple[float, float]:
        lo_data, hi_data = self._grid_bounds(self._min, self._max)
        cum = np.cumsum(self._counts.numpy(), dtype=np.float64)
        if self._abs:
            return 0.0, min(self._quantile(cum, self.percentile / 100.0), hi_data)
        tail = (100.0 - self.percentile) / 200.0
        lo = lo_data if tail == 0.0 else max(self._quantile(cum, tail), lo_data)
        hi = min(self._quantile(cum, 1.0 - tail), hi_data)
        return lo, max(lo, hi)

    def _levels(self) -> int:
        """Quantized bins the KL search compares against: the levels on one side (|x|) or all of them."""
        span = self.spec.qmax - self.spec.qmin + 1
        return span // 2 if self._abs else span

    def _candidates(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate windows [start, end) in local bin indices, one per threshold t = m * w.

        |x|: windows [0, m). Signed: [max(first, -m), min(last, m)) in grid terms, i.e. the
        threshold clips both sides symmetrically around 0 and the data's own ends bound it.
        """
        if self._abs:
            ends = np.arange(1, last + 1, dtype=np.int64)
            return np.zeros_like(ends), ends
        a, b = first + self._origin, last + self._origin
        m = np.arange(1, max(-a, b) + 1, dtype=np.int64)
        starts = np.maximum(-m, a) - self._origin
        ends = np.minimum(m, b) - self._origin
        keep = ends > starts
        return starts[keep], ends[keep]

    def _window_ranges(self, starts: np.ndarray, ends: np.ndarray, first: int, last: int) -> tuple[np.ndarray, ...]:
        """Float ranges of windows: their outer edges, or the data's extremes where they reach them."""
        w = self.bin_width
        lo_data, hi_data = self._grid_bounds(self._min, self._max)
        lo = np.where(starts <= first, lo_data, (starts + self._origin) * w)
        hi = np.where(ends >= last, hi_data, (ends + self._origin) * w)
        return lo, hi

    def _searched_range(self) -> tuple[float, float]:
        first, last = self._occupied()
        starts, ends = self._candidates(first, last)
        counts = self._counts.numpy().astype(np.float64)
        if self.method == "entropy":
            levels = self._levels()
            # A window whose end bin is empty while data lies beyond it has Q = 0 where P > 0:
            # its divergence is infinite, so it is dropped before the search.
            cum = np.cumsum(counts)
            clipped_high = (cum[-1] - cum[ends - 1] > 0) & (counts[ends - 1] == 0)
            clipped_low = (cum[starts] - counts[starts] > 0) & (counts[starts] == 0)
            keep = ((ends - starts) >= levels) & ~clipped_high & ~clipped_low
            starts, ends = starts[keep], ends[keep]
            if starts.size == 0:
                # Too few bins for the search: every window is narrower than the grid it is compared with.
                return self._grid_bounds(self._min, self._max)
            kl = _kl_divergences(counts, starts, ends, levels)
            # Last minimum: on ties keep the widest range, as TensorRT does.
            best = int(kl.size - 1 - np.argmin(kl[::-1]))
        else:
            best = self._mse_search(counts, starts, ends, first, last)
        lo, hi = self._window_ranges(starts[best : best + 1], ends[best : best + 1], first, last)
        return float(lo[0]), float(hi[0])

    def _mse_errors(self, index: np.ndarray, starts, ends, first, last, points, weights) -> np.ndarray:
        lo, hi = self._window_ranges(starts[index], ends[index], first, last)
        lo, hi = torch.from_numpy(lo).to(torch.float32), torch.from_numpy(hi).to(torch.float32)
        if self._abs:
            lo = -hi
        spec = self._per_candidate_spec
        scale, zero_point = choose_qparams(lo, hi, spec)
        grid = points.expand(index.size, -1)
        err = fake_quantize(grid, scale, zero_point, spec) - grid
        return (err.square() @ weights).numpy()

    def _mse_search(self, counts: np.ndarray, starts: np.ndarray, ends: np.ndarray, first: int, last: int) -> int:
        bins = np.flatnonzero(counts[first:last]) + first
        lo_data, hi_data = self._grid_bounds(self._min, self._max)
        lo_i, hi_i = 0, starts.size - 1
        if not self.spec.dtype.is_float:
            # Every threshold at once with the textbook model (uniform rounding noise s^2 / 12
            # inside the grid, clipping error outside), from prefix sums: it centres the bracket
            # that the measured search below narrows. The model is rough where most values sit
            # within a few steps (GELU outputs), so the bracket is wide: on MiniLM's activations
            # this found the exhaustive optimum to within 0.02 dB with ~50 measured thresholds.
            centres = np.clip((bins + self._origin + 0.5) * self.bin_width, lo_data, hi_data)
            model = self._modelled_mse(centres, counts[bins], starts, ends, first, last)
            best = int(np.argmin(model))
            reach = max(_MSE_STEPS, int(_MSE_BRACKET * starts.size))
            lo_i, hi_i = max(best - reach, 0), min(best + reach, starts.size - 1)
        k = _MSE_POINTS_PER_BIN
        pos = ((bins + self._origin)[:, None] + (np.arange(k) + 0.5) / k) * self.bin_width
        # The bins holding the extremes reach past them; no value lies out there.
        points = torch.from_numpy(np.clip(pos, lo_data, hi_data).astype(np.float32).reshape(1, -1))
        weights = torch.from_numpy(np.repeat(counts[bins] / k, k).astype(np.float32))
        args = (starts, ends, first, last, points, weights)
        with torch.no_grad():
            # Evenly spaced thresholds, then again between the neighbours of the best one, until
            # the bracket is small enough to try all of it (fp8, with no uniform grid to model,
            # starts from every threshold).
            # Each measuring call costs ~0.2 ms of fixed overhead, so the last bracket may be up to
            # three rounds wide rather than take another round.
            while hi_i - lo_i + 1 > 3 * _MSE_STEPS:
                probe = np.unique(np.round(np.linspace(lo_i, hi_i, _MSE_STEPS)).astype(np.int64))
                c = int(np.argmin(self._mse_errors(probe, *args)))
                lo_i, hi_i = int(probe[max(c - 1, 0)]), int(probe[min(c + 1, probe.size - 1)])
            every = np.arange(lo_i, hi_i + 1)
            return int(every[np.argmin(self._mse_errors(every, *args))])

    def _modelled_mse(self, centres, counts, starts, ends, first, last) -> np.ndarray:
        """Modelled squared error of every candidate window, for values `centres` with `counts`."""
        lo, hi = self._window_ranges(starts, ends, first, last)
        lo_t, hi_t = torch.from_numpy(lo).to(torch.float32), torch.from_numpy(hi).to(torch.float32)
        spec = self._per_candidate_spec
        scale, zero_point = choose_qparams(-hi_t if self._abs else lo_t, hi_t, spec)
        low, high = (t.double().numpy() for t in representable_range(scale, zero_point, spec))
        s0 = np.concatenate([[0.0], np.cumsum(counts)])
        s1 = np.concatenate([[0.0], np.cumsum(counts * centres)])
        s2 = np.concatenate([[0.0], np.cumsum(counts * centres**2)])
        a = np.searchsorted(centres, low)  # values below the grid: clipped to `low`
        b = np.searchsorted(centres, high, side="right")  # values above it: clipped to `high`
        below = s2[a] - 2 * low * s1[a] + low**2 * s0[a]
        above = (s2[-1] - s2[b]) - 2 * high * (s1[-1] - s1[b]) + high**2 * (s0[-1] - s0[b])
        inside = (s0[b] - s0[a]) * scale.double().numpy() ** 2 / 12
        return below + above + inside


def _kl_divergences(counts: np.ndarray, starts: np.ndarray, ends: np.ndarray, levels: int) -> np.ndarray:
    """KL(P || Q) for each window [start, end) of a histogram (TensorRT's calibration criterion).

    P is the histogram clipped to the window: counts outside it are added to its first / last
    bin. Q is the window quantized to `levels` groups of bins (bin j of a window of n bins goes
    to group floor(j * levels / n)), each group's count spread evenly over its non-empty bins.
    Both are normalised; a bin where P > 0 and Q = 0 makes the divergence infinite.

    Vectorised over windows with prefix sums: per window the cost is O(levels), not O(bins).
    With T the total count and S the count inside the window,
    KL = (1/T) * sum_j P_j (log P_j - log Q_j) + log(S / T).
    """

    def xlogx(t: np.ndarray) -> np.ndarray:
        return t * np.log(np.where(t > 0, t, 1.0))

    cum = np.concatenate([[0.0], np.cumsum(counts)])
    cum_nonzero = np.concatenate([[0.0], np.cumsum(counts > 0, dtype=np.float64)])
    cum_xlogx = np.concatenate([[0.0], np.cumsum(xlogx(counts))])
    total = cum[-1]

    # Group g holds local bins ceil(g n / L) .. ceil((g + 1) n / L) - 1. In float64 g * n / L
    # is exact or at least 1/L away from an integer, so ceil is exact.
    g = np.arange(levels + 1, dtype=np.float64)
    length = (ends - starts).astype(np.float64)
    edges = starts[:, None] + np.ceil(g[None, :] * length[:, None] / levels).astype(np.int64)
    group_sum = np.diff(cum[edges], axis=1)
    group_nonzero = np.diff(cum_nonzero[edges], axis=1)
    # sum_j P_j log P_j - P_j log Q_j without the outliers; Q_j = group_sum / group_nonzero on
    # the group's non-empty bins, and sum_j b_j log b_j telescopes to one prefix-sum difference.
    q_level = np.where(group_nonzero > 0, group_sum / np.maximum(group_nonzero, 1.0), 1.0)
    acc = (cum_xlogx[ends] - cum_xlogx[starts]) - (group_sum * np.log(q_level)).sum(1)

    # The outliers folded into the window's first and last bins change those two terms.
    def fold(bin_count: np.ndarray, outliers: np.ndarray, q: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            term = xlogx(bin_count + outliers) - xlogx(bin_count) - outliers * np.log(q)
        return np.where((outliers > 0) & (bin_count == 0), np.inf, np.where(outliers > 0, term, 0.0))

    acc = acc + fold(counts[starts], cum[starts], q_level[:, 0])
    acc = acc + fold(counts[ends - 1], total - cum[ends], q_level[:, -1])
    inside = cum[ends] - cum[starts]
    with np.errstate(divide="ignore"):
        kl = acc / total + np.log(inside / total)
    return np.where(inside > 0, kl, np.inf)


CALIBRATORS: dict[str, type[Calibrator]] = {cls.kind: cls for cls in (MinMax, MovingAverageMinMax, Histogram)}
"""Calibrator kinds by name; `build_calibrator` looks kinds up here, so adding one is one entry."""


def build_calibrator(spec: QuantSpec, kind: str, **options: Any) -> Calibrator:
    """Build a calibrator by name, as recipes name them.

    Args:
        spec: the scheme the range is chosen for.
        kind: a key of `CALIBRATORS`: "minmax", "moving_average" or "histogram".
        **options: the calibrator's constructor options (e.g. `method="percentile", percentile=99.99`).

    Returns:
        A fresh calibrator.

    Raises:
        ValueError: unknown kind or option (the message lists what is allowed).

    Example:
        >>> from quantpilot import QuantSpec
        >>> build_calibrator(QuantSpec(), "histogram", method="percentile", percentile=99.9).percentile
        99.9
    """
    if kind not in CALIBRATORS:
        raise ValueError(f"unknown calibrator kind {kind!r}; use one of: {', '.join(sorted(CALIBRATORS))}")
    cls = CALIBRATORS[kind]
    allowed = cls.option_names()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for calibrator {kind!r}; allowed: {', '.join(allowed) or 'none'}"
        )
    return cls(spec, **options)
