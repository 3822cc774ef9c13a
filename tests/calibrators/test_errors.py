"""Calibrator mistakes: each raises with a message saying what to change."""

from __future__ import annotations

import math

import pytest
import torch

from quantpilot import PerChannel, PerTensor, PerToken, QuantSpec
from quantpilot.calibrators import Histogram, MinMax, MovingAverageMinMax, build_calibrator

ALL_KINDS = [("minmax", {}), ("moving_average", {}), ("histogram", {"method": "percentile"})]
KIND_IDS = ["minmax", "moving_average", "histogram"]


@pytest.mark.parametrize("kind,options", ALL_KINDS, ids=KIND_IDS)
def test_range_before_data_raises(kind, options):
    cal = build_calibrator(QuantSpec(), kind, **options)
    with pytest.raises(ValueError, match="no data"):
        cal.compute_range()
    with pytest.raises(ValueError, match="no data"):
        cal.qparams()


@pytest.mark.parametrize("kind,options", ALL_KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_data_raises(kind, options, bad):
    cal = build_calibrator(QuantSpec(), kind, **options)
    with pytest.raises(ValueError, match="NaN or Inf"):
        cal.collect(torch.tensor([1.0, bad]))
    assert not cal.has_data


@pytest.mark.parametrize("kind,options", ALL_KINDS, ids=KIND_IDS)
def test_empty_and_non_float_data_raise(kind, options):
    cal = build_calibrator(QuantSpec(), kind, **options)
    with pytest.raises(ValueError, match="empty"):
        cal.collect(torch.empty(0))
    with pytest.raises(TypeError, match="floating-point"):
        cal.collect(torch.arange(4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        cal.collect([1.0, 2.0])


@pytest.mark.parametrize(
    "a,b,match",
    [
        (MinMax(QuantSpec()), MovingAverageMinMax(QuantSpec()), "same type"),
        (MinMax(QuantSpec()), MinMax(QuantSpec("uint8")), "different specs"),
        (MovingAverageMinMax(QuantSpec(), 0.1), MovingAverageMinMax(QuantSpec(), 0.2), "different settings"),
        (Histogram(QuantSpec(), method="mse"), Histogram(QuantSpec(), method="entropy"), "different settings"),
        (Histogram(QuantSpec(), bins=256), Histogram(QuantSpec(), bins=512), "different settings"),
    ],
    ids=["type", "spec", "momentum", "method", "bins"],
)
def test_merge_of_incompatible_calibrators_raises(a, b, match):
    with pytest.raises(ValueError, match=match):
        a.merge(b)


def test_merge_of_different_channel_counts_raises():
    spec = QuantSpec(granularity=PerChannel(0))
    a, b = MinMax(spec), MinMax(spec)
    a.collect(torch.ones(2, 3))
    b.collect(torch.ones(4, 3))
    with pytest.raises(ValueError, match="same layout"):
        a.merge(b)
    with pytest.raises(ValueError, match="same layout"):
        a.collect(torch.ones(4, 3))


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: MovingAverageMinMax(QuantSpec(), momentum=0.0), "momentum"),
        (lambda: MovingAverageMinMax(QuantSpec(), momentum=1.5), "momentum"),
        (lambda: Histogram(QuantSpec(), method="kl"), "unknown histogram method"),
        (lambda: Histogram(QuantSpec(), percentile=0.0), "percentile"),
        (lambda: Histogram(QuantSpec(), percentile=100.5), "percentile"),
        (lambda: Histogram(QuantSpec(), bins=10), "bins"),
        (lambda: Histogram(QuantSpec(granularity=PerChannel(0))), "per tensor"),
        (lambda: Histogram(QuantSpec("fp8_e4m3"), method="entropy"), "method='mse'"),
        (lambda: MinMax(QuantSpec(granularity=PerToken())), "dynamic quantization"),
        (lambda: Histogram(QuantSpec(granularity=PerToken())), "dynamic quantization"),
        (lambda: build_calibrator(QuantSpec(), "kl"), "histogram, minmax, moving_average"),
        (lambda: build_calibrator(QuantSpec(), "histogram", percentil=99.0), "allowed: method, percentile, bins"),
        (lambda: build_calibrator(QuantSpec(), "minmax", momentum=0.1), "allowed: none"),
    ],
    ids=[
        "momentum-0",
        "momentum-1.5",
        "method",
        "percentile-0",
        "percentile-100.5",
        "bins",
        "histogram-per-channel",
        "entropy-fp8",
        "minmax-per-token",
        "histogram-per-token",
        "unknown-kind",
        "unknown-option",
        "option-of-other-kind",
    ],
)
def test_bad_arguments_raise_with_a_fix(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_spec_must_be_a_quantspec():
    with pytest.raises(TypeError, match="QuantSpec"):
        MinMax("int8")


def test_load_state_dict_rejects_mismatched_state():
    with pytest.raises(ValueError, match="keys"):
        MinMax(QuantSpec()).load_state_dict({"min_val": torch.zeros(())})
    with pytest.raises(ValueError, match="counts"):
        Histogram(QuantSpec(), bins=512).load_state_dict(Histogram(QuantSpec(), bins=256).state_dict())


def test_build_calibrator_passes_options():
    cal = build_calibrator(QuantSpec(granularity=PerTensor()), "histogram", method="percentile", percentile=99.99)
    assert isinstance(cal, Histogram) and cal.method == "percentile" and cal.percentile == 99.99
    assert isinstance(build_calibrator(QuantSpec(), "moving_average", momentum=0.5), MovingAverageMinMax)
