"""The one weight-storage interface: codes, qparams, bytes, numel and the dequantized weight on every layer."""

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot import PerChannel, PerGroup, QuantSpec
from quantpilot.algorithms.llm_int8 import llm_int8
from quantpilot.nn import QuantConv2d, QuantEmbedding, QuantLinear
from quantpilot.nn.packed import WeightOnlyEmbedding, WeightOnlyLinear, pack_int4, unpack_int4
from quantpilot.nn.packing import pack_codes, unpack_codes
from quantpilot.nn.quant_module import FrozenWeightError
from quantpilot.nn.storage import frozen_form, quantize_weight
from quantpilot.primitives import dequantize

W4 = QuantSpec("int4", symmetric=True, granularity=PerChannel(0))
U4G = QuantSpec("uint4", symmetric=False, granularity=PerGroup(16))


def _layers():
    torch.manual_seed(0)
    conv = QuantConv2d.from_float(nn.Conv2d(3, 4, 3), weight_spec=W4)  # 108 codes, odd kernel width
    emb = QuantEmbedding.from_float(nn.Embedding(9, 32), weight_spec=QuantSpec("int8", granularity=PerChannel(0)))
    fp8 = QuantLinear.from_float(nn.Linear(8, 4), weight_spec=QuantSpec("fp8_e4m3", granularity=PerChannel(0)))
    odd = QuantLinear.from_float(nn.Linear(3, 3), weight_spec=W4)  # 9 codes: one padding nibble
    return {
        "linear-int8": QuantLinear.from_float(nn.Linear(32, 6)),
        "conv-int4": conv,
        "embedding-int8": emb,
        "linear-fp8": fp8,
        "linear-int4-odd": odd,
    }


@pytest.mark.parametrize("name", list(_layers()), ids=list(_layers()))
def test_recipe_layers_store_codes_that_dequantize_like_the_reference(name):
    layer = _layers()[name]
    numel, float_bytes = layer.weight_numel(), layer.stored_weight_bytes()
    expected_codes = layer.weight_codes()
    fake = layer.dequantized_weight().detach()
    layer.freeze()
    codes = layer.weight_codes()
    scale, zero_point = layer.weight_qparams()
    assert codes.shape == layer.weight.shape and torch.equal(codes.float(), expected_codes.float())
    reference = dequantize(codes, scale, zero_point, layer.weight_spec, torch.float32)
    assert torch.equal(layer.dequantized_weight(torch.float32), reference)
    assert torch.equal(layer.weight, reference) and torch.equal(reference, fake)
    assert layer.weight_numel() == numel
    packed = layer.weight_spec.dtype.bits == 4
    code_bytes = (numel + 1) // 2 if packed else numel
    qparam_bytes = scale.numel() * scale.element_size() + zero_point.numel() * zero_point.element_size()
    assert layer.stored_weight_bytes() == code_bytes + qparam_bytes < float_bytes
    assert ("weight_packed" in layer.state_dict()) == packed and "weight" not in layer.state_dict()


@pytest.mark.parametrize("bits", [4, 8], ids=["uint4", "uint8"])
def test_packed_layers_answer_the_interface(bits):
    torch.manual_seed(1)
    spec = qp.nn.packed.weight_only_spec(bits, 16)
    weight = torch.randn(6, 32)
    codes, scale, zero_point = quantize_weight(weight, spec)
    linear = WeightOnlyLinear.from_codes(codes, scale, zero_point, spec)
    table = WeightOnlyEmbedding.from_codes(codes, scale, zero_point, spec)
    reference = dequantize(codes, scale, zero_point, spec, torch.float32)
    for layer in (linear, table):
        assert torch.equal(layer.weight_codes(), codes) and layer.weight_numel() == 6 * 32
        assert torch.equal(layer.dequantized_weight(torch.float32), reference) and torch.equal(layer.weight, reference)
        assert layer.stored_weight_bytes() == 6 * 32 * bits // 8 + 2 * 6 * 2 * 2  # codes + fp16 scale and zp
        with pytest.raises(FrozenWeightError, match="read-only"):
            layer.weight = nn.Parameter(weight)


def test_llm_int8_layer_answers_the_interface():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(16, 8)).to(torch.bfloat16)
    layer = llm_int8(net, skip=())[0]
    reference = dequantize(layer.weight_codes(), *layer.weight_qparams(), layer.weight_spec, torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16 and torch.equal(layer.weight, reference)
    assert layer.weight_int is layer.weight_codes()  # the old attribute name still reads the codes
    assert layer.stored_weight_bytes() == 16 * 8 + 8 * 4 + 8 * 4


@pytest.mark.parametrize("spec", [QuantSpec("int4"), QuantSpec("uint4", symmetric=False)], ids=["int4", "uint4"])
def test_pack_codes_round_trips_every_code(spec):
    codes = torch.arange(spec.qmin, spec.qmax + 1).repeat(3)[:47].reshape(1, 47).to(spec.dtype.torch_dtype)
    packed = pack_codes(codes, spec)
    assert packed.dtype == torch.uint8 and packed.numel() == 24
    assert torch.equal(unpack_codes(packed, spec, codes.shape), codes)
    assert torch.equal(unpack_int4(pack_int4(torch.tensor([[0, 15, 7, 8]]))), torch.tensor([[0, 15, 7, 8]]).byte())


def test_frozen_weight_is_read_only_and_not_saved():
    layer = QuantLinear.from_float(nn.Linear(8, 4))
    layer.weight = nn.Parameter(torch.zeros(4, 8))  # un-frozen: a real Parameter, QAT and smooth() write it
    assert isinstance(layer.weight, nn.Parameter) and "weight" in dict(layer.named_parameters())
    layer.freeze()
    with pytest.raises(FrozenWeightError, match="read-only"):
        layer.weight = nn.Parameter(torch.zeros(4, 8))
    with pytest.raises(AttributeError):
        layer.weight = torch.zeros(4, 8)
    assert "weight" not in layer.state_dict() and not isinstance(layer.weight, nn.Parameter)


def test_freeze_records_the_float_dtype():
    net = nn.Sequential(nn.Linear(8, 4)).to(torch.bfloat16)
    qmodel = qp.freeze(qp.quantize(net, "w8a16"))
    assert qmodel[0].weight.dtype == torch.bfloat16
    assert qmodel(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_int4_recipe_layers_pack_and_round_trip_through_save_and_load(tmp_path):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(16, 15), nn.ReLU(), nn.Linear(15, 4))  # odd width: padded nibble
    recipe = qp.Recipe(weights=W4, activations="dynamic")
    qmodel = qp.freeze(qp.quantize(net, recipe))
    assert qmodel[0].weight_packed.numel() == (16 * 15 + 1) // 2
    loaded = qp.load(net, qp.save(qmodel, tmp_path / "w4"))
    for name in ("0", "2"):
        a, b = qmodel.get_submodule(name), loaded.get_submodule(name)
        assert torch.equal(a.weight_codes(), b.weight_codes()) and torch.equal(a.weight, b.weight)
    x = torch.randn(3, 16)
    assert torch.equal(qmodel(x), loaded(x))
    with pytest.raises(FrozenWeightError):
        loaded[0].weight = nn.Parameter(torch.zeros(15, 16))


def test_frozen_form_keeps_layers_that_are_not_weight_only():
    int4_static = QuantLinear.from_float(nn.Linear(32, 4), weight_spec=W4)
    assert frozen_form(int4_static) is int4_static and int4_static.is_frozen
    with pytest.raises(TypeError, match="QuantModule"):
        frozen_form(nn.Linear(2, 2))


def test_w4a16_preset_gives_rtn_codes_and_a_packed_table(tmp_path):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Embedding(10, 128), nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128))
    net[3].bias = None
    recipe = qp.Recipe.preset("w4a16-g128").replace(module_types=("Linear", "Conv1D"))
    ours = qp.freeze(qp.quantize(net, recipe))
    reference = qp.algorithms.rtn(net, bits=4, group_size=128, skip=())
    for name in ("1", "3"):
        a, b = ours.get_submodule(name), reference.get_submodule(name)
        assert type(a) is WeightOnlyLinear
        assert torch.equal(a.weight_packed, b.weight_packed)
        assert all(torch.equal(x, y) for x, y in zip(a.weight_qparams(), b.weight_qparams(), strict=True))
        assert (a.bias is None) == (b.bias is None)
    full = qp.freeze(qp.quantize(net, "w4a16-g128"))
    assert type(full[0]) is WeightOnlyEmbedding and type(full[1]) is WeightOnlyLinear
    loaded = qp.load(net, qp.save(full, tmp_path / "w4"))
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(full(ids), loaded(ids)) and torch.equal(full[0].weight, loaded[0].weight)
