"""The integer form of a layer is read from its storage interface (`computes`, spec, qparams, input quantizer)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.nn import integer_linear
from quantpilot.nn.integer_forms import INT8_GEMM, INT8_WEIGHT_ONLY, WEIGHT_ONLY_KERNEL, integer_form
from quantpilot.nn.llm_int8_linear import LLMInt8Linear
from quantpilot.nn.packed import WeightOnlyEmbedding, WeightOnlyLinear, weight_only_spec
from quantpilot.nn.weight_only_kernels import is_packed_weight_only, kernel_problem


def frozen_linear(preset: str) -> nn.Module:
    return qp.freeze(qp.quantize(nn.Sequential(nn.Linear(64, 64)), preset))[0]


def packed_linear(bits: int = 4, group: int | None = 32) -> WeightOnlyLinear:
    groups = 1 if group is None else 128 // group
    codes = torch.randint(0, 2**bits, (64, 128), generator=torch.Generator().manual_seed(bits))
    return WeightOnlyLinear.from_codes(
        codes, torch.rand(64, groups) / 20, torch.full((64, groups), 8.0), weight_only_spec(bits, group)
    )


@pytest.mark.parametrize(
    ("make", "form", "module"),
    [
        (lambda: frozen_linear("int8-dynamic"), INT8_GEMM, "Int8Linear"),
        (lambda: frozen_linear("w8a16"), INT8_WEIGHT_ONLY, "Int8WeightOnlyLinear"),
        (lambda: packed_linear(4, 32), WEIGHT_ONLY_KERNEL, "WeightOnlyKernelLinear"),
        (lambda: packed_linear(8, None), WEIGHT_ONLY_KERNEL, "WeightOnlyKernelLinear"),
    ],
    ids=["w8a8", "w8a16", "packed-int4", "packed-int8"],
)
def test_each_storage_gets_its_integer_module(make, form, module):
    layer = make()
    assert integer_form(layer) == (form, None)
    assert type(integer_linear.to_integer(layer)).__name__ == module


def test_a_packed_embedding_is_a_lookup_and_stays():
    table = WeightOnlyEmbedding.from_codes(torch.zeros(5, 4), torch.ones(5), torch.zeros(5), weight_only_spec(8, None))
    form, reason = integer_form(table)
    assert form is None and "WeightOnlyEmbedding" in reason and "lookup" in reason
    assert "not a packed weight-only Linear" in kernel_problem(table)


def test_layers_that_do_not_declare_a_plain_linear_are_refused_by_name():
    # LLM.int8() stores int8 weights with a float input, yet its forward is not x @ W.T: no W8A16 for it.
    form, reason = integer_form(LLMInt8Linear(torch.randn(4, 8), None))
    assert form is None and "LLMInt8Linear" in reason


def test_unsigned_weights_of_a_quant_linear_are_not_the_packed_weight_only_storage():
    # Same spec as a packed layer, but int32 zero points: the int8 checks refuse it, the kernel is not tried.
    layer = qp.nn.QuantLinear(torch.randn(64, 128), None, weight_spec=weight_only_spec(8, None))
    layer.freeze()
    assert not is_packed_weight_only(layer)
    assert "weights are uint8" in integer_linear.unsupported_reason(layer)
    assert "not a packed weight-only Linear" in kernel_problem(layer)


def test_a_linear_of_another_class_is_served_through_the_interface():
    class MyLinear(qp.nn.QuantLinear):  # no isinstance on concrete classes: the interface decides
        pass

    layer = MyLinear(torch.randn(8, 16), None)
    layer.freeze()
    assert integer_form(layer) == (INT8_WEIGHT_ONLY, None)
    x = torch.randn(3, 16)
    torch.testing.assert_close(integer_linear.to_integer(layer)(x), layer(x))


def test_integer_modules_name_the_module_a_packed_layer_needs():
    with pytest.raises(ValueError, match="WeightOnlyKernelLinear"):
        integer_linear.Int8WeightOnlyLinear(packed_linear())
    with pytest.raises(ValueError, match="WeightOnlyKernelLinear"):
        integer_linear.Int8Linear(packed_linear())
