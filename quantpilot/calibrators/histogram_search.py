"""The entropy (KL divergence) and MSE range searches of the `Histogram` calibrator.

They work on at most `bins` numbers, where numpy's per-call cost (a few us) is far below torch's;
the quantization math itself still goes through quantpilot.primitives.
"""

from __future__ import annotations

import numpy as np
import torch

from ..primitives import choose_qparams, fake_quantize, representable_range

# Fake-quantization points per histogram bin for the MSE estimate: the rounding error of a
# bin is averaged over these, not taken from its centre alone (which is wrong by up to a step).
_MSE_POINTS_PER_BIN = 4
# Thresholds the MSE search measures per round while it narrows its bracket.
_MSE_STEPS = 24
# Half-width of the first bracket around the modelled optimum, as a fraction of all thresholds.
_MSE_BRACKET = 0.15


class _HistogramSearch:
    """The searched ranges of `Histogram` (methods "entropy" and "mse"), as a mixin over its state.

    Reads the histogram's `_counts`, `_origin`, `_min`, `_max`, `bin_width`, `_abs`, `_grid_bounds`,
    `_occupied`, `spec` and `_per_candidate_spec`.
    """

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
