"""Packed weight-only storage: int4 nibble packing round-trips and WeightOnlyLinear's dequantized math."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantpilot.nn.packed import WeightOnlyLinear, pack_int4, unpack_int4, weight_only_spec


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 5), half_cols=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_pack_unpack_round_trip(rows, half_cols, seed):
    codes = torch.randint(0, 16, (rows, 2 * half_cols), generator=torch.Generator().manual_seed(seed))
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, half_cols)
    assert torch.equal(unpack_int4(packed), codes.to(torch.uint8))


def test_pack_layout_is_low_nibble_first():
    # 0x21 = 2 << 4 | 1: the even column sits in the low nibble (the GPTQ/AWQ/torch int4 convention).
    assert pack_int4(torch.tensor([1, 2])).tolist() == [0x21]


@pytest.mark.parametrize(
    "codes, error",
    [(torch.tensor([16, 0]), ValueError), (torch.tensor([1, 2, 3]), ValueError), (torch.tensor([0.5, 1.0]), TypeError)],
    ids=["out-of-range", "odd-length", "float"],
)
def test_pack_rejects_bad_codes(codes, error):
    with pytest.raises(error):
        pack_int4(codes)


@pytest.mark.parametrize(
    "bits, group", [(4, 32), (4, None), (8, None), (8, 64)], ids=["w4g32", "w4pc", "w8pc", "w8g64"]
)
def test_weight_only_linear_matches_hand_dequantized_weight(bits, group):
    gen = torch.Generator().manual_seed(0)
    out_f, in_f = 6, 128
    qmax = 2**bits - 1
    groups = 1 if group is None else in_f // group
    codes = torch.randint(0, qmax + 1, (out_f, in_f), generator=gen)
    scale = torch.rand(out_f, groups, generator=gen) + 0.1
    zero = torch.randint(0, qmax + 1, (out_f, groups), generator=gen).float()
    bias = torch.randn(out_f, generator=gen)
    layer = WeightOnlyLinear.from_codes(codes, scale, zero, weight_only_spec(bits, group), bias)
    # Hand dequantization with the fp16-rounded qparams, column by column.
    s16 = scale.half().float().repeat_interleave(in_f // groups, dim=1)
    z = zero.repeat_interleave(in_f // groups, dim=1)
    expected_w = (codes.float() - z) * s16
    torch.testing.assert_close(layer.quantized_weight(torch.float32), expected_w, rtol=0, atol=0)
    x = torch.randn(3, in_f, generator=gen)
    torch.testing.assert_close(layer(x), x @ expected_w.T + bias)
    assert layer.is_frozen and torch.equal(layer.weight_codes(), codes.to(torch.uint8))
    # Storage: bits per weight, plus an fp16 scale and an fp16 zero point per group.
    assert layer.weight_packed.numel() * layer.weight_packed.element_size() == out_f * in_f * bits // 8
    assert layer.weight_scale.element_size() == layer.weight_zero_point.element_size() == 2


def test_weight_only_linear_rejects_bad_configuration():
    with pytest.raises(ValueError, match="multiple of group_size"):
        WeightOnlyLinear(100, 4, weight_only_spec(4, 64))
    with pytest.raises(ValueError, match="scale_dtype"):
        WeightOnlyLinear(128, 4, weight_only_spec(4, 64), scale_dtype=torch.float32)
    with pytest.raises(ValueError, match="bits"):
        weight_only_spec(3, 128)
    with pytest.raises(ValueError, match="0..15"):
        WeightOnlyLinear.from_codes(torch.full((2, 4), 16), torch.ones(2), torch.zeros(2), weight_only_spec(4, None))
