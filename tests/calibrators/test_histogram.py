"""Histogram ranges: numpy for percentiles, SQNR floors for entropy / MSE, ranges that stay inside the data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantpilot import QuantSpec
from quantpilot.calibrators import Histogram, MinMax
from quantpilot.metrics import sqnr_db
from quantpilot.primitives import choose_qparams, dequantize, quantize

from ._data import FAST, finite, heavy_tailed


def range_sqnr_db(x: torch.Tensor, spec: QuantSpec, lo: torch.Tensor, hi: torch.Tensor) -> float:
    """SQNR of quantize -> dequantize of `x` over the range [lo, hi]."""
    scale, zp = choose_qparams(lo, hi, spec)
    return sqnr_db(x, dequantize(quantize(x, scale, zp, spec), scale, zp, spec))


@pytest.mark.parametrize("percentile", [90.0, 99.0, 99.99, 100.0], ids=["p90", "p99", "p99.99", "p100"])
@FAST
@given(arr=hnp.arrays(np.float32, st.integers(1, 3000), elements=finite))
def test_percentile_symmetric_matches_numpy_within_one_bin(percentile, arr):
    cal = Histogram(QuantSpec("int8"), method="percentile", percentile=percentile)
    cal.collect(torch.from_numpy(arr))
    lo, hi = cal.compute_range()
    assert lo.item() == -hi.item()
    assert_within_a_bin_of_percentile(hi.item(), np.abs(arr), percentile, cal.bin_width)


@pytest.mark.parametrize("percentile", [99.0, 99.9], ids=["p99", "p99.9"])
@FAST
@given(arr=hnp.arrays(np.float32, st.integers(1, 3000), elements=finite))
def test_percentile_asymmetric_cuts_both_tails(percentile, arr):
    cal = Histogram(QuantSpec("uint8", symmetric=False), method="percentile", percentile=percentile)
    cal.collect(torch.from_numpy(arr))
    lo, hi = cal.compute_range()
    tail = (100.0 - percentile) / 2
    assert_within_a_bin_of_percentile(lo.item(), arr, tail, cal.bin_width)
    assert_within_a_bin_of_percentile(hi.item(), arr, 100 - tail, cal.bin_width)


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99], ids=["p99", "p99.9", "p99.99"])
def test_percentile_on_continuous_data_is_numpys_within_one_bin(percentile):
    x = heavy_tailed("student-t")
    cal = Histogram(QuantSpec("int8"), method="percentile", percentile=percentile)
    cal.collect(x)
    expected = float(np.percentile(x.abs().numpy().astype(np.float64), percentile))
    assert abs(cal.compute_range()[1].item() - expected) <= cal.bin_width


def assert_within_a_bin_of_percentile(value: float, arr: np.ndarray, percentile: float, width: float) -> None:
    """numpy interpolates between the two order statistics around the percentile; with ties or
    gaps (discrete data) the percentile can fall anywhere between them, so bracket by both."""
    data = arr.astype(np.float64)
    low = np.percentile(data, percentile, method="lower")
    high = np.percentile(data, percentile, method="higher")
    slack = width * (1 + 1e-6)
    assert low - slack <= value <= high + slack


def calibrated_sqnr(kind: str, spec: QuantSpec, method: str) -> tuple[float, float]:
    """SQNR (dB) with the histogram method's range and with the min-max range, same data."""
    x = heavy_tailed(kind)
    cal, ref = Histogram(spec, method=method), MinMax(spec)
    cal.collect(x[:100_000])
    cal.collect(x[100_000:])
    ref.collect(x)
    lo, hi = cal.compute_range()
    amax = x.abs().max().item()
    assert 0.0 < hi.item() <= amax and -amax <= lo.item() <= 0.0
    if spec.symmetric:
        assert lo.item() == -hi.item()
    return range_sqnr_db(x, spec, lo, hi), range_sqnr_db(x, spec, *ref.compute_range())


SPECS = [QuantSpec("int8"), QuantSpec("uint8", symmetric=False), QuantSpec("int4")]
SPEC_IDS = ["int8-sym", "uint8-affine", "int4-sym"]


@pytest.mark.parametrize("kind", ["student-t", "laplace-outliers"], ids=["student-t", "laplace-outliers"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_mse_range_beats_minmax_sqnr_on_heavy_tails(kind, spec):
    ours, minmax = calibrated_sqnr(kind, spec, "mse")
    assert ours > minmax + 0.5


@pytest.mark.parametrize("kind", ["student-t", "laplace-outliers"], ids=["student-t", "laplace-outliers"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_mse_range_is_as_good_as_a_brute_force_search_on_the_data(kind, spec):
    # The histogram search models and then evaluates thresholds; a direct search over the raw
    # values (same family of ranges: [max(min, -t), min(max, t)]) must not find a better one.
    x = heavy_tailed(kind, n=20_000, seed=1)
    cal = Histogram(spec, method="mse")
    cal.collect(x)
    ours = range_sqnr_db(x, spec, *cal.compute_range())
    lo_data, hi_data = x.min().item(), x.max().item()
    best = max(
        range_sqnr_db(x, spec, torch.tensor(max(lo_data, -t)), torch.tensor(min(hi_data, t)))
        for t in np.linspace(x.abs().max().item() / 200, x.abs().max().item(), 200)
    )
    assert ours >= best - 0.05


@pytest.mark.parametrize(
    "kind,spec,margin",
    [
        ("student-t", QuantSpec("int4"), 3.0),
        ("laplace-outliers", QuantSpec("int4"), 3.0),
        ("laplace", QuantSpec("int8"), 0.3),
        ("laplace", QuantSpec("uint8", symmetric=False), 0.1),
    ],
    ids=["student-t-int4", "laplace-outliers-int4", "laplace-int8", "laplace-uint8-affine"],
)
def test_entropy_range_beats_minmax_sqnr(kind, spec, margin):
    # KL divergence is not an error criterion: on int8 data with rare large outliers it clips
    # them harder than SQNR rewards (see the next test). It wins where rounding noise dominates.
    ours, minmax = calibrated_sqnr(kind, spec, "entropy")
    assert ours > minmax + margin


def test_entropy_clips_harder_than_mse_on_outliers():
    x = heavy_tailed("laplace-outliers")
    ranges = {}
    for method in ("entropy", "mse"):
        cal = Histogram(QuantSpec("int8"), method=method)
        cal.collect(x)
        ranges[method] = cal.compute_range()[1].item()
    assert ranges["entropy"] < ranges["mse"] < x.abs().max().item()


@pytest.mark.parametrize("method", ["entropy", "mse", "percentile"], ids=["entropy", "mse", "percentile"])
@FAST
@given(arr=hnp.arrays(np.float32, st.integers(1, 500), elements=finite), symmetric=st.booleans())
def test_histogram_ranges_stay_inside_the_data(method, arr, symmetric):
    spec = QuantSpec("int8", symmetric=symmetric)
    cal = Histogram(spec, method=method, bins=256)
    cal.collect(torch.from_numpy(arr))
    lo, hi = cal.compute_range()
    amax = float(np.abs(arr).max())
    assert 0.0 <= hi.item() <= amax or (not symmetric and lo.item() <= hi.item() <= amax)
    assert -amax <= lo.item() <= hi.item()
    if not symmetric:
        assert float(arr.min()) <= lo.item() and hi.item() <= float(arr.max())
    scale, _ = cal.qparams()
    assert scale.item() > 0


def test_mse_works_for_fp8():
    x = heavy_tailed("laplace")
    spec = QuantSpec("fp8_e4m3")
    cal = Histogram(spec, method="mse")
    cal.collect(x)
    lo, hi = cal.compute_range()
    assert 0 < hi.item() <= x.abs().max().item() and lo.item() == -hi.item()


@pytest.mark.parametrize("method", ["entropy", "mse", "percentile"], ids=["entropy", "mse", "percentile"])
def test_all_zero_data_gives_a_zero_range_and_a_valid_scale(method):
    cal = Histogram(QuantSpec("int8"), method=method)
    cal.collect(torch.zeros(10))
    assert cal.compute_range()[1].item() == 0.0
    assert cal.qparams()[0].item() > 0
