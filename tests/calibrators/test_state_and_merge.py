"""Calibrator state: histogram growth, merge == one stream, state dicts, reset, input dtypes, no gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quantpilot import PerChannel, QuantSpec
from quantpilot.calibrators import CALIBRATORS, Histogram, MinMax, build_calibrator

from ._data import FAST, batches, finite_or_tiny, heavy_tailed


def test_later_batch_outside_range_keeps_every_count():
    cal = Histogram(QuantSpec("int8", symmetric=False), bins=256)
    first = torch.linspace(-1, 1, 1000)
    second = torch.linspace(-300, 50, 777)
    cal.collect(first)
    width_before = cal.bin_width
    cal.collect(second)
    counts, edges = cal.histogram()
    assert cal.bin_width > width_before
    assert int(counts.sum()) == 1777
    # The coarse histogram is exactly the histogram of all the data on the final grid.
    ref, _ = np.histogram(torch.cat([first, second]).numpy().astype(np.float64), bins=edges.numpy())
    assert counts.tolist() == ref.tolist()


def histogram_state_equal(a: Histogram, b: Histogram) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("symmetric", [True, False], ids=["abs", "signed"])
@FAST
@given(
    arr=hnp.arrays(np.float32, st.integers(2, 400), elements=finite_or_tiny),
    split=st.floats(0.0, 1.0),
    wide=st.sampled_from([1.0, 1e3, 1e6]),
)
def test_histogram_merge_equals_single_stream(symmetric, arr, split, wide):
    x = torch.from_numpy(arr)
    cut = min(max(1, int(split * len(x))), len(x) - 1)
    first, second = x[:cut], x[cut:] * wide  # the second shard may be much wider
    spec = QuantSpec("int8", symmetric=symmetric)
    single, a, b = (Histogram(spec, bins=256) for _ in range(3))
    single.collect(first)
    single.collect(second)
    a.collect(first)
    b.collect(second)
    assert histogram_state_equal(a.merge(b), single)
    # Order does not matter either: the grid depends only on the data.
    reverse = Histogram(spec, bins=256)
    reverse.collect(second)
    reverse.collect(first)
    assert histogram_state_equal(reverse, single)
    assert int(single.state_dict()["counts"].sum()) == len(x)


@FAST
@given(data=batches(min_dims=2, count=4), wide=st.sampled_from([1.0, 1e3]))
def test_minmax_merge_equals_single_stream(data, wide):
    spec = QuantSpec("int8", symmetric=False, granularity=PerChannel(-1))
    single, a, b = MinMax(spec), MinMax(spec), MinMax(spec)
    for i, arr in enumerate(data):
        t = torch.from_numpy(arr) * (wide if i % 2 else 1.0)
        single.collect(t)
        (b if i % 2 else a).collect(t)
    a.merge(b)
    assert all(torch.equal(x, y) for x, y in zip(a.compute_range(), single.compute_range(), strict=True))


@pytest.mark.parametrize("kind", sorted(CALIBRATORS), ids=sorted(CALIBRATORS))
def test_state_dict_round_trip_through_plain_tensors(kind):
    spec = QuantSpec("int8", symmetric=False)
    cal = build_calibrator(spec, kind)
    cal.collect(heavy_tailed("laplace", n=5000))
    state = cal.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    clone = build_calibrator(spec, kind).load_state_dict(state)
    for x, y in zip(clone.compute_range(), cal.compute_range(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("kind", sorted(CALIBRATORS), ids=sorted(CALIBRATORS))
def test_reset_forgets_statistics(kind):
    cal = build_calibrator(QuantSpec(), kind)
    cal.collect(torch.ones(3))
    assert cal.has_data
    cal.reset()
    assert not cal.has_data


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["fp16", "bf16", "fp64"])
@pytest.mark.parametrize("kind", sorted(CALIBRATORS), ids=sorted(CALIBRATORS))
def test_any_float_dtype_calibrates_like_its_float32_values(dtype, kind):
    x = heavy_tailed("laplace", n=4000).to(dtype)
    cal, ref = build_calibrator(QuantSpec(), kind), build_calibrator(QuantSpec(), kind)
    cal.collect(x)
    ref.collect(x.float())
    assert torch.equal(cal.compute_range()[1], ref.compute_range()[1])


def test_collect_does_not_track_gradients():
    x = torch.randn(10, requires_grad=True)
    for kind in CALIBRATORS:
        cal = build_calibrator(QuantSpec(), kind)
        cal.collect(x * 2)
        assert not cal.compute_range()[1].requires_grad
