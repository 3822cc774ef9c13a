"""Mixture-of-experts weights: transformers' 3-D expert stacks quantized, saved, loaded and generated with."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

import quantpilot as qp
from quantpilot.nn.experts import PackedExpertWeight, QuantExperts, QuantExpertWeight, is_experts_class
from quantpilot.primitives import fake_quantize

transformers = pytest.importorskip("transformers")

_BASE = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=32,
    use_cache=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# name -> (config, model, extra config): (out, in) stacks, a shared expert, gpt-oss's (in, out) stacks with biases.
MOE = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2)),
    "qwen2-moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32),
    ),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2)),
    "gpt-oss": (
        "GptOssConfig",
        "GptOssForCausalLM",
        dict(num_local_experts=4, num_experts_per_tok=2, head_dim=16, sliding_window=8),
    ),
}


def _build(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    config_name, model_name, extra = MOE[family]
    if not hasattr(transformers, model_name):
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(getattr(transformers, config_name)(**{**_BASE, **extra, **overrides}))
    for module in model.modules():
        if is_experts_class(type(module)):
            for p in module.parameters(recurse=False):
                torch.nn.init.normal_(p, std=0.05)  # transformers leaves expert stacks at zero or tiny values
    return model.eval()


def _ids(seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randint(3, 96, (batch, 12), generator=torch.Generator().manual_seed(seed))


def _g32(preset: str) -> qp.Recipe:
    recipe = qp.Recipe.preset(preset)
    if isinstance(recipe.weights.granularity, qp.PerGroup):
        recipe = recipe.replace(weights=dataclasses.replace(recipe.weights, granularity=qp.PerGroup(32)))
    return recipe


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _float_stacks(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.dim() == 3]


@pytest.mark.parametrize("transposed", [False, True], ids=["out-in", "in-out"])
def test_a_stack_is_quantized_per_expert_output_row_in_its_own_layout(transposed):
    stack = torch.randn(3, 5, 8)  # (experts, out, in), or (experts, in, out) when transposed
    layer = QuantExpertWeight(stack, transposed=transposed)
    rows = (stack.transpose(1, 2) if transposed else stack).reshape(-1, 8 if not transposed else 5)
    assert layer.weight.shape == rows.shape and layer.weight_qparams()[0].shape == (rows.shape[0],)
    before = layer.expert_weight(torch.float32).detach()
    assert before.shape == stack.shape
    scale, zero_point = layer.weight_qparams()
    expected = fake_quantize(rows, scale, zero_point, layer.weight_spec).reshape(before.shape[0], -1, rows.shape[1])
    assert torch.equal(before, expected.transpose(1, 2) if transposed else expected)
    layer.freeze()
    assert layer.weight_codes().dtype == torch.int8 and torch.equal(layer.expert_weight(torch.float32), before)


@pytest.mark.parametrize(
    "family,preset",
    [("mixtral", "w8a16"), ("mixtral", "w4a16-g128"), ("qwen2-moe", "rtn-w4-g128"), ("olmoe", "w8a16"),
     ("gpt-oss", "w4a16-g128")],
    ids=["mixtral-w8a16", "mixtral-w4a16", "qwen2moe-rtn-w4", "olmoe-w8a16", "gptoss-w4a16"],
)  # fmt: skip
def test_presets_quantize_the_experts_and_save_load_is_bit_exact(family, preset, tmp_path):
    model, ids = _build(family), _ids()
    stacks = sum(p.numel() for p in model.parameters() if p.dim() == 3)
    share_of_stacks = stacks / sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    qmodel = qp.freeze(qp.quantize(model, _g32(preset)))
    assert not _float_stacks(qmodel), "a 3-D expert stack stayed float"
    experts = [m for m in qmodel.modules() if isinstance(m, QuantExperts)]
    assert experts and all(isinstance(m.down_proj, PackedExpertWeight) == ("w4" in preset) for m in experts)
    assert qp.summary(qmodel).quantized_share > share_of_stacks > 0.25  # the stacks are counted as quantized
    ref, out = _logits(model, ids), _logits(qmodel, ids)
    floor = 0.99 if "w8" in preset else 0.95  # mean over positions; random tiny models, g32
    assert torch.nn.functional.cosine_similarity(out.flatten(0, 1), ref.flatten(0, 1)).mean() > floor
    qp.save(qmodel, tmp_path / "q")
    loaded = qp.load(_build(family, seed=1), tmp_path / "q")
    assert torch.equal(_logits(loaded, ids), out)
    assert _float_stacks(model), "the user's float model lost its expert stacks"


def test_rtn_quantizes_the_experts_and_generates():
    model = _build("mixtral")
    qmodel = qp.algorithms.rtn(model, bits=4, group_size=32)
    assert not _float_stacks(qmodel)
    out = qmodel.generate(input_ids=_ids(), max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 15)


def test_gptq_names_the_experts_it_leaves_to_round_to_nearest():
    model, ids = _build("mixtral"), _ids(batch=6)  # GPTQ wants at least in_features tokens
    qmodel = qp.quantize(model, _g32("gptq-w4-g128"))
    with qp.calibrate(qmodel):
        qmodel(input_ids=ids)
    with pytest.warns(UserWarning, match=r"\['gptq'\] handle Linear layers only.*model\.layers\.0\.mlp\.experts"):
        qp.freeze(qmodel)
    assert isinstance(qmodel.model.layers[0].mlp.experts.gate_up_proj, PackedExpertWeight)


def test_static_activations_name_the_experts_that_keep_float_inputs():
    with pytest.warns(UserWarning, match=r"model\.layers\.0\.mlp\.experts\) get quantized weights but keep float"):
        qp.quantize(_build("mixtral"), "int8-static")


def test_a_group_that_does_not_divide_the_expert_widths_is_refused_before_anything_changes():
    model = _build("mixtral", intermediate_size=48)  # down_proj's input width 48 is no multiple of 32
    expected = r"PerGroup\(size=32\).*model\.layers\.0\.mlp\.experts' \(MixtralExperts, 16\)"
    with pytest.raises(ValueError, match=expected):
        qp.quantize(model, _g32("w4a16-g128"), inplace=True)
    assert _float_stacks(model) and not any(isinstance(m, QuantExperts) for m in model.modules())


def test_loading_onto_other_expert_sizes_is_refused_in_one_line(tmp_path):
    qp.save(qp.freeze(qp.quantize(_build("mixtral"), _g32("w4a16-g128"))), tmp_path / "q")
    with pytest.raises(ValueError, match=r"expert stack is \(4, 128, 32\).*this float model's is \(4, 192, 32\)"):
        qp.load(_build("mixtral", intermediate_size=96), tmp_path / "q")
    meta = json.loads((tmp_path / "q" / "quantpilot.json").read_text())
    meta["layers"]["model.layers.0.mlp.experts.down_proj"]["config"]["experts"] = -4
    (tmp_path / "q" / "quantpilot.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lacks positive sizes"):
        qp.load(_build("mixtral"), tmp_path / "q")


def test_every_warning_is_quantpilots_own():
    # The float model's unhandled-weights warning no longer lists expert stacks (only the small routers).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qp.quantize(_build("mixtral"), "w8a16")
    assert not any("Experts" in str(w.message) for w in caught)


def test_a_stack_skipped_by_its_own_name_stays_float_and_reloads(tmp_path):
    # Sensitivity sweeps leave one quantized layer float by name: here "...experts.down_proj".
    model, ids = _build("mixtral"), _ids()
    qmodel = qp.freeze(qp.quantize(model, qp.Recipe.preset("w8a16").replace(skip=("*.experts.down_proj",))))
    experts = qmodel.model.layers[0].mlp.experts
    assert experts.stack_names == ("gate_up_proj",)
    assert torch.equal(experts.inner.down_proj, model.model.layers[0].mlp.experts.down_proj)
    qp.save(qmodel, tmp_path / "q")
    assert torch.equal(_logits(qp.load(_build("mixtral", seed=1), tmp_path / "q"), ids), _logits(qmodel, ids))


@pytest.mark.parametrize("family", ["mixtral", "gpt-oss"], ids=["out-in-stacks", "in-out-stacks"])
def test_layer_errors_compare_expert_stacks_with_the_float_model(family):
    """The float experts module holds its stacks as Parameters: layer_errors finds them there, in either layout."""
    from quantpilot.analysis import layer_errors
    from quantpilot.metrics import sqnr_db

    model = _build(family)
    qmodel = qp.freeze(qp.quantize(model, "w8a16"))
    report = layer_errors(qmodel, [torch.randint(3, 96, (2, 8))], float_model=model)
    stacks = [r for r in report.rows if r.type == "QuantExpertWeight"]
    assert stacks, [r.type for r in report.rows]
    for row in stacks:
        layer = qmodel.get_submodule(row.name)
        float_stack = model.get_parameter(row.name).detach()
        float_stack = float_stack.transpose(1, 2) if layer.transposed else float_stack
        expected = sqnr_db(float_stack.reshape(-1, layer.in_features), layer.quantized_weight(torch.float32))
        assert row.weight_sqnr_db == pytest.approx(expected, abs=0.05)
