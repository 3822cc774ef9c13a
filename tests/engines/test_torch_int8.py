"""The torch-int8 engine: integer layers compute what the fake-quant layers compute, within one output step.

How the tolerances follow from the integer and float32 arithmetic: `_torch_int8_checks`.
"""

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.nn.integer_linear import Int8Linear, Int8WeightOnlyLinear, to_integer
from quantpilot.primitives import SCALE_EPS
from quantpilot.spec import PerChannel, PerGroup, PerToken, QuantSpec

from ._torch_int8_checks import check_layers_against_fake_quant, check_model_against_fake_quant, frozen, mlp, mlp_batch

RECIPES = {
    "int8-static": qp.Recipe.preset("int8-static"),
    "int8-dynamic": qp.Recipe.preset("int8-dynamic"),
    "static-asym-int8": qp.Recipe(activations=QuantSpec("int8", symmetric=False)),
    "static-asym-uint8": qp.Recipe(activations=QuantSpec("uint8", symmetric=False)),
    "static-sym-uint8": qp.Recipe(activations=QuantSpec("uint8", symmetric=True)),
    "dynamic-token-sym": qp.Recipe(activations=QuantSpec("int8", granularity=PerToken()), dynamic=True),
    "dynamic-tensor-sym": qp.Recipe(activations=QuantSpec("int8"), dynamic=True),
    "dynamic-tensor-asym-uint8": qp.Recipe(activations=QuantSpec("uint8", symmetric=False), dynamic=True),
    "per-tensor-weights": qp.Recipe(weights=QuantSpec("int8", narrow_range=True), activations="dynamic"),
    "w8a16": qp.Recipe.preset("w8a16"),
}


def test_engine_is_registered():
    assert "torch-int8" in qp.engines.available_engines()


@pytest.mark.parametrize("name", list(RECIPES), ids=list(RECIPES))
def test_mlp_layers_match_fake_quant_within_one_step(name):
    model = mlp()
    qmodel = frozen(model, RECIPES[name], [mlp_batch(i) for i in range(3)])
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    assert runner.engine == "torch-int8"
    assert sorted(runner.integer_layers) == ["0", "2", "4"] and runner.fallback_layers == {}
    kind = Int8WeightOnlyLinear if name == "w8a16" else Int8Linear
    assert all(type(runner.model.get_submodule(n)) is kind for n in runner.integer_layers)
    assert check_layers_against_fake_quant(runner, qmodel, mlp_batch(7)) == 3
    check_model_against_fake_quant(runner, qmodel, model, mlp_batch(8))


@pytest.mark.parametrize("preset", ["int8-static", "int8-dynamic", "w8a16"], ids=["static", "dynamic", "w8a16"])
def test_smoothquant_factors_are_applied_before_quantizing(preset):
    if not hasattr(qp.nn.QuantLinear, "smooth"):
        pytest.skip("this QuantLinear has no SmoothQuant factors")
    model = mlp()
    qmodel = qp.quantize(model, preset)
    factors = torch.rand(40, generator=torch.Generator().manual_seed(3)) * 4 + 0.25
    qmodel.get_submodule("0").smooth(factors)
    qmodel = frozen(qmodel, None, [mlp_batch(i) for i in range(3)])
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    assert torch.equal(runner.model.get_submodule("0").input_smoothing, factors)
    check_layers_against_fake_quant(runner, qmodel, mlp_batch(7))


def test_static_bias_is_folded_into_int32():
    qmodel = frozen(mlp(), "int8-static", [mlp_batch(0)])
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    layer = runner.model.get_submodule("0")
    assert layer.bias_mode == "int32" and layer.bias is None and layer.offset.dtype == torch.int32
    assert "bias int32" in runner.integer_layers["0"]


@pytest.fixture(scope="module")
def bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=100
    )
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def bert_batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0  # padding, as a real batch has
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("preset", ["int8-static", "int8-dynamic"], ids=["static", "dynamic"])
def test_bert_layers_match_fake_quant_within_one_step(bert, preset):
    qmodel = frozen(bert, preset, [bert_batch(i) for i in range(3)])
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    # 2 layers x (query, key, value, attention output, intermediate, output) + pooler (M = 3 rows).
    assert len(runner.integer_layers) == 13 and "pooler.dense" in runner.integer_layers
    assert set(runner.fallback_layers) == {f"embeddings.{e}_embeddings" for e in ("word", "position", "token_type")}
    assert all("QuantEmbedding" in reason for reason in runner.fallback_layers.values())
    assert check_layers_against_fake_quant(runner, qmodel, bert_batch(9)) == 13
    check_model_against_fake_quant(runner, qmodel, bert, bert_batch(10), key="last_hidden_state")


class Fork(nn.Module):
    """Three layers read one tensor, as query / key / value do; the third after it changed in place."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(24, 16), nn.Linear(24, 16), nn.Linear(24, 16)

    def forward(self, x):
        x = x * 1.0  # a fresh tensor the model owns
        q, k = self.q(x), self.k(x)
        x.mul_(3.0)
        return torch.cat([q, k, self.v(x)], dim=-1)


@pytest.mark.parametrize("preset", ["int8-static", "int8-dynamic"], ids=["static", "dynamic"])
def test_layers_reading_one_tensor_quantize_it_once_and_see_in_place_changes(preset, monkeypatch):
    torch.manual_seed(0)
    model = Fork().eval()
    qmodel = frozen(model, preset, [torch.randn(6, 24) * 3 for _ in range(2)])
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    quantized = []
    original = Int8Linear._codes
    monkeypatch.setattr(Int8Linear, "_codes", lambda self, x: quantized.append(self) or original(self, x))
    x = torch.randn(5, 24)
    check_layers_against_fake_quant(runner, qmodel, x)
    quantized.clear()
    out = runner(x)
    # q and k share codes (calibrated on one tensor, their static ranges agree too); v's input changed in place.
    assert runner.model.q.code_key == runner.model.k.code_key
    assert [type(m) for m in quantized] == [Int8Linear, Int8Linear] and quantized[1] is runner.model.v
    with torch.no_grad():
        assert qp.metrics.sqnr_db(qmodel(x), out) > 60
    with torch.inference_mode():  # no version counters: nothing is cached, results are the same
        assert torch.equal(runner.model(x), out)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        names = ("a4", "w4g", "wasym", "fp8", "ok")
        self.fcs = nn.ModuleDict({n: nn.Linear(32, 32) for n in names})

    def forward(self, x):
        x = self.conv(x.transpose(1, 2)).transpose(1, 2).reshape(x.shape[0], -1, 32)
        for fc in self.fcs.values():
            x = torch.relu(fc(x)) + 0.1
        return x


def test_layers_the_integer_path_cannot_serve_fall_back_with_a_reason():
    torch.manual_seed(0)
    model = Mixed().eval()
    recipe = qp.Recipe(
        activations="dynamic",
        overrides={
            "fcs.a4": {"activations": QuantSpec("int4", symmetric=False, granularity=PerToken())},
            "fcs.w4g": {"weights": QuantSpec("int4", granularity=PerGroup(16))},
            "fcs.wasym": {"weights": QuantSpec("int8", symmetric=False, granularity=PerChannel(0))},
            "fcs.fp8": {
                "weights": QuantSpec("fp8_e4m3", granularity=PerChannel(0)),
                "activations": QuantSpec("fp8_e4m3", granularity=PerToken()),
            },
        },
    )
    qmodel = qp.freeze(qp.quantize(model, recipe))
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    assert list(runner.integer_layers) == ["fcs.ok"]
    reasons = runner.fallback_layers
    assert set(reasons) == {"conv", "fcs.a4", "fcs.w4g", "fcs.wasym", "fcs.fp8"}
    assert "QuantConv1d" in reasons["conv"] and "int4" in reasons["fcs.a4"] and "int4" in reasons["fcs.w4g"]
    assert "asymmetric" in reasons["fcs.wasym"] and "fp8" in reasons["fcs.fp8"]
    # The fallback layers are the fake-quant modules themselves.
    assert type(runner.model.get_submodule("fcs.fp8")) is qp.nn.QuantLinear
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1))
    check_layers_against_fake_quant(runner, qmodel, x)
    check_model_against_fake_quant(runner, qmodel, model, x)


def test_tiny_static_scale_keeps_the_bias_in_float_instead_of_overflowing_int32():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.fill_(-1.0)  # ReLU output is always 0: the second input range is [0, 0]
        model[2].bias.fill_(50.0)
    batches = [torch.rand(8, 4) for _ in range(2)]
    qmodel = frozen(model, "int8-static", batches)
    assert qmodel[2].input_quantizer.scale.item() == pytest.approx(SCALE_EPS)
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    assert runner.model[2].bias_mode == "float" and "bias float" in runner.integer_layers["2"]
    x = torch.rand(5, 4)
    with torch.no_grad():
        assert torch.allclose(runner(x), qmodel(x)) and torch.allclose(runner(x), torch.full((5, 2), 50.0))


def test_bfloat16_input_gives_bfloat16_output():
    qmodel = frozen(mlp(), "int8-dynamic", [])
    layer = to_integer(qmodel.get_submodule("0"))
    x = mlp_batch(1)
    with torch.no_grad():
        y16, y32 = layer(x.bfloat16()), layer(x)
    assert y16.dtype == torch.bfloat16 and qp.metrics.sqnr_db(y32, y16.float()) > 30


def test_weight_only_takes_the_fake_quant_values_for_few_rows_and_many():
    # Few rows (decoding) scale the output; many rows dequantize the weight, exactly as the fake-quant layer.
    qmodel = qp.freeze(qp.quantize(mlp(), "w8a16"))
    runner = qp.engines.compile(qmodel, engine="torch-int8")
    for rows in (1, 80):
        check_layers_against_fake_quant(runner, qmodel, torch.randn(rows, 40))
    x = torch.randn(80, 40)
    with torch.no_grad():
        assert torch.equal(runner.model.get_submodule("0")(x), qmodel.get_submodule("0")(x))
