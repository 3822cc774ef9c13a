"""Quantization points on functional ops: attention matmuls (transformers) and residual adds (torch.fx)."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

import quantpilot as qp
from quantpilot.functional_points import functional_points
from quantpilot.nn.attention import quantized_attention

CONFIGS = {
    "bert": lambda: transformers.BertConfig(
        vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48
    ),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=90, n_embd=32, n_layer=2, n_head=4),
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=90,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
    ),
}


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[2, 6:] = 0
    return {"input_ids": torch.randint(1, 90, (3, 10), generator=g), "attention_mask": mask}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_matmul_points_on_every_attention_module(family):
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(CONFIGS[family]()).eval()
    recipe = qp.Recipe(
        weights=None,
        activations=qp.QuantSpec("int8", symmetric=False),
        ops=("matmul",),
        module_types=("Linear", "Conv1D"),
    )
    qmodel = qp.quantize(model, recipe)
    points = functional_points(qmodel)
    assert len(points) == 2 and all(p.endswith(":matmul") for p in points)
    assert model.config._attn_implementation != "quantpilot"  # the user's model is untouched
    with qp.calibrate(qmodel):
        for seed in range(3):
            qmodel(**_batch(seed))
    qp.freeze(qmodel)
    batch = _batch(5)
    reference = model(**batch).last_hidden_state
    out = qmodel(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    cosine = torch.nn.functional.cosine_similarity(out[real], reference[real], dim=-1)
    assert cosine.min() > 0.98
    # Every matmul quantizer was calibrated and is symmetric (OpenVINO's int8 attention needs it).
    matmul_quantizers = [m for n, m in qmodel.named_modules() if ".quantpilot_matmul." in n]
    assert len(matmul_quantizers) == 8
    assert all(q.spec.symmetric and q.scale is not None for q in matmul_quantizers)


def test_quantized_attention_without_quantizers_is_eager_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = torch.zeros(2, 1, 5, 5)
    mask[1, ..., 3:] = torch.finfo(torch.float32).min
    out, probs = quantized_attention(nn.Module(), q, k, v, mask, scaling=0.3)
    k_full, v_full = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k_full, v_full, attn_mask=mask, scale=0.3)
    assert torch.allclose(out, expected.transpose(1, 2), atol=1e-5)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 5))


def test_skip_and_override_patterns_reach_points():
    model = transformers.AutoModel.from_config(CONFIGS["bert"]()).eval()
    recipe = qp.Recipe.preset("int8-static").replace(
        ops=("matmul",),
        skip=("encoder.layer.1.attention.self:matmul",),
        overrides={"*:matmul": {"activation_calibrator": {"kind": "minmax"}}},
    )
    qmodel = qp.quantize(model, recipe)
    assert functional_points(qmodel) == ["encoder.layer.0.attention.self:matmul"]
    quantizer = qmodel.get_submodule("encoder.layer.0.attention.self.quantpilot_matmul.probs")
    assert quantizer.calibrator_config.kind == "minmax"


def test_matmul_points_round_trip_through_save_and_load(tmp_path):
    model = transformers.AutoModel.from_config(CONFIGS["gpt2"]()).eval()
    qmodel = qp.quantize(model, qp.Recipe.preset("int8-static").replace(ops=("matmul",)))
    with qp.calibrate(qmodel):
        qmodel(**_batch())
    qp.freeze(qmodel)
    qp.save(qmodel, tmp_path / "q")
    loaded = qp.load(transformers.AutoModel.from_config(CONFIGS["gpt2"]()).eval(), tmp_path / "q")
    batch = _batch(3)
    assert torch.equal(loaded(**batch).last_hidden_state, qmodel(**batch).last_hidden_state)


def test_an_override_naming_one_matmul_input_gives_it_its_own_scheme(tmp_path):
    model = transformers.AutoModel.from_config(CONFIGS["bert"]()).eval()
    unsigned = qp.QuantSpec("uint8", symmetric=False)
    recipe = qp.Recipe.preset("int8-static").replace(
        ops=("matmul",),
        overrides={
            "*:matmul": {"activation_calibrator": {"kind": "minmax"}},
            "*:matmul.probs": {"activations": unsigned},
            "encoder.layer.1.*:matmul.value": {"activations": None},
        },
    )
    qmodel = qp.quantize(model, recipe)
    with qp.calibrate(qmodel):
        qmodel(**_batch())
    qp.freeze(qmodel)
    block0 = qmodel.get_submodule("encoder.layer.0.attention.self.quantpilot_matmul")
    # The softmax output is non-negative: uint8 with zero point 0; the point's calibrator still applies.
    assert block0.probs.spec == unsigned and int(block0.probs.zero_point) == 0
    assert block0.probs.calibrator_config.kind == "minmax" and block0.key.spec.symmetric
    assert qmodel.get_submodule("encoder.layer.1.attention.self.quantpilot_matmul.value").spec is None
    qp.save(qmodel, tmp_path / "q")
    loaded = qp.load(transformers.AutoModel.from_config(CONFIGS["bert"]()).eval(), tmp_path / "q")
    batch = _batch(3)
    assert torch.equal(loaded(**batch).last_hidden_state, qmodel(**batch).last_hidden_state)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bias = nn.Parameter(torch.zeros(4, 1, 1))

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x))) + self.bias  # a parameter add: not residual
        return torch.relu(x + y) + 1.0  # a constant add: not residual


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.blocks(x).mean(dim=(2, 3)))


def test_add_points_quantize_both_inputs_of_residual_adds_only(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    qmodel = qp.quantize(model, qp.Recipe.preset("int8-static").replace(ops=("add",)))
    assert functional_points(qmodel) == ["blocks.0:add", "blocks.1:add"]
    assert isinstance(model, Net)  # the original is not traced in place
    with qp.calibrate(qmodel):
        for _ in range(3):
            qmodel(torch.randn(8, 4, 8, 8))
    qp.freeze(qmodel)
    adds = [m for m in qmodel.modules() if type(m).__name__ == "QuantAdd"]
    assert all(a.lhs_quantizer.scale is not None and a.rhs_quantizer.scale is not None for a in adds)
    x = torch.randn(4, 4, 8, 8)
    assert torch.nn.functional.cosine_similarity(qmodel(x).flatten(), model(x).flatten(), dim=0) > 0.99
    qp.save(qmodel, tmp_path / "q")
    assert torch.equal(qp.load(Net(), tmp_path / "q")(x), qmodel(x))


def test_add_points_on_efficientnet_blocks():
    from quantpilot.models import load

    model, _ = load("efficientnet-lite0")
    qmodel = qp.quantize(model, qp.Recipe.preset("int8-static").replace(ops=("add",)))
    assert len(functional_points(qmodel)) == 9  # the 9 MBConv blocks with an identity skip


def test_add_points_on_a_transformers_model_say_what_to_do():
    model = transformers.AutoModel.from_config(CONFIGS["bert"]()).eval()
    with pytest.raises(ValueError, match="ops=\\('matmul',\\)"):
        qp.quantize(model, qp.Recipe.preset("int8-static").replace(ops=("add", "matmul")))


def test_recipe_ops_are_validated_and_serialised():
    with pytest.raises(ValueError, match="unknown ops"):
        qp.Recipe(ops=("softmax",))
    with pytest.raises(ValueError, match="activation scheme"):
        qp.Recipe(activations=None, ops=("matmul",))
    recipe = qp.Recipe.preset("int8-tensorrt")
    assert qp.Recipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.ops == ("matmul", "add") and recipe.activations.symmetric


def test_matmul_points_name_the_attention_they_cannot_reach():
    import transformers

    cfg = transformers.DebertaV2Config(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    model = transformers.DebertaV2Model(cfg).eval()
    with pytest.warns(
        UserWarning, match=r"DebertaV2Model's encoder.layer.0.attention.self \(DisentangledSelfAttention\)"
    ):
        qmodel = qp.quantize(model, qp.Recipe(ops=("matmul",)))
    assert type(qmodel.encoder.layer[0].attention.self.query_proj).__name__ == "QuantLinear"


@pytest.mark.parametrize(
    "kind,advice",
    [("cnn", "its Conv/Linear layers are still quantized"), ("bert", "use ops=\\('matmul',\\)")],
    ids=["transformers-resnet", "bert"],
)
def test_add_points_on_an_untraceable_model_give_advice_that_fits_it(kind, advice):
    import transformers

    if kind == "cnn":
        cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
        model = transformers.ResNetForImageClassification(cfg).eval()
    else:
        cfg = transformers.BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
        model = transformers.BertModel(cfg).eval()
    with pytest.raises(ValueError, match=f"torch.fx, which failed on .*; remove 'add' from the recipe's ops: {advice}"):
        qp.quantize(model, qp.Recipe(ops=("add",)))
