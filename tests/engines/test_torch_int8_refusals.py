"""What the torch-int8 engine refuses, and how: unfrozen or unquantized models, torch.ao layers, granularities
that cannot leave the integer sum; and what `compile` leaves alone."""

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.nn import integer_linear
from quantpilot.nn.integer_linear import Int8Linear, Int8WeightOnlyLinear, to_integer
from quantpilot.spec import PerChannel, PerGroup, QuantSpec

from ._torch_int8_checks import frozen, mlp, mlp_batch


@pytest.mark.parametrize(
    ("spec", "dynamic", "reason"),
    [
        (QuantSpec("int8", granularity=PerChannel(1)), False, "static PerChannel"),
        (QuantSpec("int8", granularity=PerGroup(8)), True, "dynamic PerGroup"),
    ],
    ids=["static-per-channel", "dynamic-per-group"],
)
def test_activation_granularities_that_cannot_leave_the_sum_are_refused(spec, dynamic, reason):
    layer = qp.nn.QuantLinear(torch.randn(4, 16), None, input_quantizer=qp.nn.TensorQuantizer(spec, dynamic=dynamic))
    layer.store_weight_as_integers()
    if not dynamic:
        layer.input_quantizer.scale, layer.input_quantizer.zero_point = (
            torch.ones(16),
            torch.zeros(16, dtype=torch.int32),
        )
    assert reason in integer_linear.unsupported_reason(layer)
    with pytest.raises(ValueError, match=reason):
        to_integer(layer)


def test_compile_leaves_the_given_model_untouched():
    qmodel = frozen(mlp(), "int8-dynamic", [])
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    assert runner.model is not qmodel
    assert all(type(qmodel.get_submodule(n)) is qp.nn.QuantLinear for n in ("0", "2", "4"))
    assert all(torch.equal(v, qmodel.state_dict()[k]) for k, v in before.items())


def test_a_model_with_no_integer_layer_warns_and_still_runs():
    net = nn.Sequential(nn.Linear(128, 8))
    qmodel = qp.freeze(qp.quantize(net, "w4a16-g128"))
    with pytest.warns(UserWarning, match="no layer runs on the integer path"):
        runner = qp.engines.compile(qmodel, engine="torch-int8")
    x = torch.randn(2, 128)
    with torch.no_grad():
        assert torch.equal(runner(x), qmodel(x))


def test_not_frozen_is_refused():
    with pytest.raises(ValueError, match="freeze first"):
        qp.engines.compile(qp.quantize(mlp(), "int8-dynamic"), engine="torch-int8")
    qmodel = qp.quantize(mlp(), "int8-static")
    with qp.calibrate(qmodel):
        qmodel(mlp_batch(0))
    qmodel.get_submodule("0").store_weight_as_integers()
    qmodel.get_submodule("2").store_weight_as_integers()
    qmodel.get_submodule("4").store_weight_as_integers()  # weights frozen, activation ranges not yet fixed
    with pytest.raises(ValueError, match=r"freeze first.*0\.input_quantizer"):
        qp.engines.compile(qmodel, engine="torch-int8")


def test_models_without_quantized_layers_are_refused():
    with pytest.raises(ValueError, match="no quantized layer"):
        qp.engines.compile(mlp(), engine="torch-int8")
    with pytest.raises(TypeError, match="nn.Module"):
        qp.engines.compile("model.onnx", engine="torch-int8")


def test_torch_ao_dynamic_models_are_refused_not_run():
    ao_linear = pytest.importorskip("torch.ao.nn.quantized.dynamic").Linear
    with pytest.raises(ValueError, match="torch.ao"):
        qp.engines.compile(nn.Sequential(ao_linear(8, 8)), engine="torch-int8")
    mixed = qp.freeze(qp.quantize(nn.Sequential(nn.Linear(8, 8)), "int8-dynamic"))
    mixed.append(ao_linear(8, 8))  # quantpilot layers beside a torch.ao one: still refused
    with pytest.raises(ValueError, match="torch.ao"):
        qp.engines.compile(mixed, engine="torch-int8")


def test_integer_modules_refuse_layers_of_the_other_kind():
    weight_only = qp.freeze(qp.quantize(mlp(), "w8a16")).get_submodule("0")
    dynamic = qp.freeze(qp.quantize(mlp(), "int8-dynamic")).get_submodule("0")
    with pytest.raises(ValueError, match="Int8WeightOnlyLinear"):
        Int8Linear(weight_only)
    with pytest.raises(ValueError, match="Int8Linear"):
        Int8WeightOnlyLinear(dynamic)
    with pytest.raises(ValueError, match="not frozen"):
        to_integer(qp.quantize(mlp(), "int8-dynamic").get_submodule("0"))
