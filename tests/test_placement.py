"""quantpilot.placement: candidates per model kind / engine / CPU, and the torch-int8 warning on bf16 CPUs."""

import warnings

import pytest
import torch

import quantpilot as qp
from quantpilot.engines import torch_int8
from quantpilot.placement import depthwise_layers, engine_options, ffn_down_layers, has_amx, placements_for

AMX = {"flags": {"amx_int8": True, "amx_bf16": True, "avx512_vnni": True}}
VNNI = {"flags": {"amx_int8": False, "amx_bf16": False, "avx512_vnni": True}}


@pytest.mark.parametrize("kind", ["transformer", "cnn", "minilm", "efficientnet"], ids=lambda k: k)
@pytest.mark.parametrize("cpu", [AMX, VNNI], ids=["amx", "vnni"])
def test_candidates_are_named_valid_recipes(kind, cpu):
    found = placements_for(kind, "openvino", cpu)
    names = [name for name, _ in found]
    assert names and len(set(names)) == len(names)
    for name, recipe in found:
        assert recipe.name == name and recipe.notes["placement"]
        assert qp.Recipe.from_dict(recipe.to_dict()) == recipe  # the autopilot can save what it measured


def test_cnn_order_follows_the_isa():
    # AMX: all convolutions int8 with uint8 activations first (zero point 0 after ReLU6: 1.36x OpenVINO bf16),
    # then symmetric int8; without AMX the residual-add placement that won on Zen 4 comes first.
    assert [n for n, _ in placements_for("cnn", "openvino", AMX)][:2] == ["int8-u8", "int8-sym"]
    assert placements_for("cnn", "openvino", VNNI)[0][0] == "int8-all+add"
    first, second = (r for _, r in placements_for("cnn", "openvino", AMX)[:2])
    assert first.activations.dtype.value == "uint8" and not first.activations.symmetric
    assert second.activations.symmetric


def test_depthwise_found_by_groups_and_skipped():
    conv = torch.nn.Conv2d
    net = torch.nn.Sequential(conv(8, 8, 3, groups=8), conv(8, 16, 1), conv(16, 16, 3, groups=2))
    assert depthwise_layers(net) == ("0",)
    pointwise = dict(placements_for("cnn", "openvino", AMX, model=net))["int8-sym-pointwise"]
    assert pointwise.for_layer("0", "Conv2d") is None and pointwise.for_layer("1", "Conv2d") is not None


def test_ffn_down_projections_found_by_shape_and_left_float():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)  # fmt: skip
    bert = BertModel(config).eval()
    assert ffn_down_layers(bert) == ("encoder.layer.0.output.dense", "encoder.layer.1.output.dense")
    found = dict(placements_for("transformer", "openvino", AMX, model=bert))
    ffn_float = found["int8-smooth-ffn-float"]
    assert ffn_float.for_layer("encoder.layer.0.output.dense", "Linear") is None
    assert ffn_float.for_layer("encoder.layer.0.attention.output.dense", "Linear") is not None
    assert ffn_float.steps == found["int8-smooth"].steps == (qp.steps.SmoothQuant(alpha=0.8),)
    # without the model the names decide: BERT's down projection, not its attention output projection
    by_name = dict(placements_for("transformer", "openvino", AMX))["int8-smooth-ffn-float"]
    assert by_name.for_layer("encoder.layer.3.output.dense", "Linear") is None
    assert by_name.for_layer("encoder.layer.3.attention.output.dense", "Linear") is not None


def test_smooth_sym_gptq_keeps_only_the_ffn_down_inputs_asymmetric_and_runs_on_a_bert(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)  # fmt: skip
    bert = BertModel(config).eval()
    name, recipe = placements_for("transformer", "openvino", AMX, model=bert)[0]
    assert name == "int8-smooth-sym-gptq"
    assert recipe.steps == (qp.steps.SmoothQuant(alpha=0.8), qp.steps.GPTQ())
    assert not recipe.for_layer("encoder.layer.0.output.dense", "Linear").activations.symmetric
    assert recipe.for_layer("encoder.layer.0.attention.output.dense", "Linear").activations.symmetric
    assert recipe.for_point("encoder.layer.0.attention.self:matmul.probs").activations.dtype.value == "uint8"
    batches = [{"input_ids": torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(i))}
               for i in range(8)]  # fmt: skip
    qmodel = qp.api.run_pipeline(bert, recipe, batches)
    assert qp.recipe_of(qmodel).steps[-1] == qp.steps.GPTQ()
    loaded = qp.load(BertModel(config).eval(), qp.save(qmodel, tmp_path / "q"))
    with torch.no_grad():
        assert torch.equal(loaded(**batches[0]).last_hidden_state, qmodel(**batches[0]).last_hidden_state)


def test_refusals_name_the_fix():
    with pytest.raises(ValueError, match="model_kind='rnn'"):
        placements_for("rnn", "openvino", AMX)
    with pytest.raises(ValueError, match="engine='tensorrt'"):
        placements_for("cnn", "tensorrt", AMX)


def test_engine_options_and_amx_flags():
    assert engine_options("openvino", AMX) == {"dtype": "bfloat16"}
    assert engine_options("openvino", VNNI) == {} and engine_options("onnxruntime", AMX) == {}
    assert has_amx(AMX) and not has_amx(VNNI)


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16-cpu", "no-bf16"])
def test_torch_int8_warns_where_bf16_wins(monkeypatch, bf16):
    monkeypatch.setattr(torch_int8, "bf16_hardware", lambda flags=None: bf16)
    qmodel = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(16, 8)), "int8-dynamic"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qp.engines.compile(qmodel, engine="torch-int8")
    said = [str(w.message) for w in caught if "slower than bf16" in str(w.message)]
    assert bool(said) == bf16
    if bf16:
        assert "openvino" in said[0] and caught[0].filename == __file__
