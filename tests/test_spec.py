"""QuantSpec validation, ranges of every format, and the dict round trip."""

import pytest

from quantpilot import PerChannel, PerGroup, PerTensor, PerToken, QuantDtype, QuantSpec
from quantpilot.spec import granularity_from_dict

RANGES = [
    ("int8", False, (-128, 127)),
    ("int8", True, (-127, 127)),
    ("uint8", False, (0, 255)),
    ("uint8", True, (1, 255)),
    ("int4", False, (-8, 7)),
    ("int4", True, (-7, 7)),
    ("uint4", False, (0, 15)),
    ("uint4", True, (1, 15)),
]


@pytest.mark.parametrize(
    "dtype,narrow,expected", RANGES, ids=[f"{d}-{'narrow' if n else 'full'}" for d, n, _ in RANGES]
)
def test_integer_ranges(dtype, narrow, expected):
    spec = QuantSpec(dtype, narrow_range=narrow)
    assert (spec.qmin, spec.qmax) == expected


def test_string_and_enum_are_interchangeable():
    assert QuantSpec("int4") == QuantSpec(QuantDtype.INT4)
    assert QuantSpec("int4").dtype is QuantDtype.INT4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dtype": "int3"}, "known format"),
        ({"dtype": "fp8_e4m3", "symmetric": False}, "no zero point"),
        ({"dtype": "fp8_e5m2", "narrow_range": True}, "integer formats only"),
    ],
    ids=["unknown-dtype", "fp8-asymmetric", "fp8-narrow"],
)
def test_invalid_combinations_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantSpec(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"symmetric": 1}, {"granularity": "per_tensor"}, {"narrow_range": None}],
    ids=["symmetric-int", "granularity-str", "narrow-none"],
)
def test_wrong_types_raise_type_error(kwargs):
    with pytest.raises(TypeError):
        QuantSpec(**kwargs)


def test_granularity_validation():
    with pytest.raises(ValueError, match="positive"):
        PerGroup(0)
    with pytest.raises(TypeError):
        PerChannel(axis=1.5)


def test_fp8_has_no_integer_grid():
    spec = QuantSpec("fp8_e4m3")
    assert spec.fp_max == 448.0
    with pytest.raises(ValueError, match="integer"):
        _ = spec.qmin


SPECS = [
    QuantSpec(),
    QuantSpec("uint8", symmetric=False, narrow_range=True, granularity=PerChannel(1)),
    QuantSpec("int4", symmetric=False, granularity=PerGroup(32)),
    QuantSpec("int8", granularity=PerToken()),
    QuantSpec("fp8_e5m2"),
]


@pytest.mark.parametrize("spec", SPECS, ids=["default", "uint8-pc", "int4-g32", "per-token", "fp8"])
def test_dict_round_trip(spec):
    assert QuantSpec.from_dict(spec.to_dict()) == spec


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown QuantSpec keys"):
        QuantSpec.from_dict({"dtype": "int8", "bits": 8})
    with pytest.raises(ValueError, match="unknown granularity"):
        granularity_from_dict("per_block")


def test_granularity_from_name():
    assert granularity_from_dict("per_tensor") == PerTensor()
    assert granularity_from_dict({"type": "per-channel", "axis": 1}) == PerChannel(1)


def test_spec_is_hashable_and_frozen():
    spec = QuantSpec()
    assert hash(spec) == hash(QuantSpec())
    with pytest.raises(AttributeError):
        spec.symmetric = False  # type: ignore[misc]
