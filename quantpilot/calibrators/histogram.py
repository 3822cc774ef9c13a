"""The `Histogram` calibrator: the histogram itself and percentile ranges (`quantpilot.calibrators` re-exports it).

The entropy and MSE range searches live in `histogram_search`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from ..spec import PerChannel, PerTensor, QuantSpec
from .base import Calibrator, _check_batch, _check_finite, _check_state_keys
from .histogram_search import _HistogramSearch

# Narrowest bin width, as a power of two: 2**-126 is float32's smallest normal number, so the
# bin index x * 2**-k never overflows and the width itself stays representable.
_MIN_LOG2_WIDTH = -126
# float32 keeps 24 significant bits: bins narrower than amax * 2**-24 would split values that
# float32 cannot tell apart, and would make x / width overflow for a nearly constant signed tensor.
_MANTISSA_BITS = 24
_METHODS = ("entropy", "mse", "percentile")
_COLLECT_CHUNK = 2**18


class Histogram(_HistogramSearch, Calibrator):
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
