"""AWQ: scale folding is float-exact, the search follows the paper's formula and beats RTN, errors, save/load."""

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.algorithms.awq import MIN_CALIBRATION_TOKENS, ScaleGroup, awq_fold_scales, find_scale_groups

from ._tiny_lms import tiny_gpt2, tiny_llama, token_batches

SALIENT = [3, 50, 77, 101]


def salient_block(seed=0):
    """LayerNorm -> Linear where a few channels leave the norm 20x larger: the salient inputs AWQ protects."""
    torch.manual_seed(seed)
    block = nn.Sequential(nn.LayerNorm(128), nn.Linear(128, 64)).eval()
    with torch.no_grad():
        block[0].weight.uniform_(0.5, 1.5)
        block[0].weight[SALIENT] *= 20.0
        block[0].bias.normal_(0, 0.1)
    return block


def inputs(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 128, generator=g) for _ in range(n)]


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2-conv1d", "llama-rmsnorm"])
def test_folding_scales_leaves_the_float_model_unchanged(build):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = token_batches(8)
    folded = awq_fold_scales(model, batches, bits=4, group_size=32, clip=False)
    changed = [k for k, v in folded.state_dict().items() if not torch.equal(v, before[k])]
    assert any("norm" in k or "ln_" in k for k in changed)  # scales really went into the norms
    with torch.no_grad():
        for batch in token_batches(2, seed=5):
            torch.testing.assert_close(folded(**batch).logits, model(**batch).logits, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched


def test_groups_of_gpt2_and_llama():
    gpt2 = [g.key for g in find_scale_groups(tiny_gpt2(), token_batches(1)[0])]
    assert "transformer.h.0.ln_1 -> transformer.h.0.attn.c_attn" in gpt2
    assert "transformer.h.1.ln_2 -> transformer.h.1.mlp.c_fc" in gpt2
    assert "transformer.h.0.attn.c_attn -> transformer.h.0.attn.c_proj" in gpt2
    llama = [g.key for g in find_scale_groups(tiny_llama(), token_batches(1)[0])]
    attn = "model.layers.0.self_attn"
    assert f"model.layers.0.input_layernorm -> {attn}.q_proj, {attn}.k_proj, {attn}.v_proj" in llama
    mlp = "model.layers.0.mlp"
    assert f"model.layers.0.post_attention_layernorm -> {mlp}.gate_proj, {mlp}.up_proj" in llama
    assert f"{attn}.v_proj -> {attn}.o_proj" in llama
    assert "model.layers.1.mlp.up_proj -> model.layers.1.mlp.down_proj" in llama


def test_norm_fed_groups_are_scored_on_the_attention_and_mlp_blocks():
    # As the reference's module2inspect: q/k/v on the whole attention's output, gate/up (c_fc) on the MLP's.
    for build, attn, mlp in [
        (tiny_gpt2, "transformer.h.0.attn", "transformer.h.0.mlp"),
        (tiny_llama, "model.layers.0.self_attn", "model.layers.0.mlp"),
    ]:
        groups = find_scale_groups(build(), token_batches(1)[0])
        assert {attn, mlp} <= {g.inspect for g in groups if "norm" in g.prev or ".ln_" in g.prev}
        linear_fed = [g for g in groups if g.prev.endswith(("v_proj", "c_attn"))]
        assert linear_fed and all(g.inspect is None for g in linear_fed)  # those score their own layer's output


class _OnlyFirstHeadCounts(nn.Module):
    """A block reading one input with two layers, where only `a` reaches the output."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(128, 32), nn.Linear(128, 32)

    def forward(self, x):
        return self.a(x) + 0.0 * self.b(x)


class _NormThenBlock(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.norm, self.block = nn.LayerNorm(128), _OnlyFirstHeadCounts()
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.weight[SALIENT] *= 20.0
            self.block.b.weight.mul_(50.0)  # b would dominate an error summed over the layers' own outputs
            self.block.b.weight[:, SALIENT] /= 200.0

    def forward(self, x):
        return self.block(self.norm(x))


def test_alpha_is_chosen_on_the_block_output_not_the_layer_outputs():
    net, batches = _NormThenBlock(seed=1).eval(), inputs(4, seed=1)
    every_token = {"group_size": 32, "clip": False, "search_tokens": 10**6}
    on_block = awq_fold_scales(net, batches, **every_token).quantpilot_awq
    assert on_block["inspected"] == {"norm -> block.a, block.b": "block"}
    # The block output is a's output alone, so the block search must choose what a search on a alone chooses...
    on_a = awq_fold_scales(net, batches, pairs=[("norm", ["block.a"])], **every_token).quantpilot_awq
    assert on_block["alphas"]["norm -> block.a, block.b"] == on_a["alphas"]["norm -> block.a"]
    # ... which differs from what summing both layers' output errors would choose.
    on_layers = awq_fold_scales(net, batches, pairs=[ScaleGroup("norm", ("block.a", "block.b"))], **every_token)
    assert on_layers.quantpilot_awq["alphas"]["norm -> block.a, block.b"] != on_a["alphas"]["norm -> block.a"]
    assert on_layers.quantpilot_awq["inspected"] == {}


def test_scale_is_the_activation_magnitude_to_the_chosen_alpha():
    block, batches = salient_block(), inputs(4, seed=1)
    folded = awq_fold_scales(block, batches, bits=4, group_size=32, clip=False)
    alpha = folded.quantpilot_awq["alphas"]["0 -> 1"]
    assert 0.0 < alpha < 1.0 and alpha in [i / 20 for i in range(20)]
    with torch.no_grad():
        s_x = torch.cat([block[0](x) for x in batches]).abs().mean(0)
    s = s_x.pow(alpha)
    s = s / (s.max() * s.min()).sqrt()
    torch.testing.assert_close(block[0].weight / folded[0].weight, s, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(folded[1].weight / block[1].weight, s.expand(64, 128), rtol=1e-4, atol=1e-6)


def test_awq_beats_rtn_on_salient_input_channels():
    block, batches = salient_block(), inputs(4, seed=1)
    quantized = qp.algorithms.awq(block, batches, bits=4, group_size=32)
    plain = qp.algorithms.rtn(salient_block(), bits=4, group_size=32)
    test = torch.cat(inputs(2, seed=7))
    with torch.no_grad():
        ref = block(test)
        mse_awq = (quantized(test) - ref).pow(2).mean()
        mse_rtn = (plain(test) - ref).pow(2).mean()
    assert mse_awq < 0.7 * mse_rtn, (float(mse_awq), float(mse_rtn))


def test_whole_decoder_w4_stays_close_and_is_frozen():
    model, batches = tiny_llama(), token_batches(8)
    qmodel = qp.algorithms.awq(model, batches, bits=4, group_size=32)
    assert qp.is_frozen(qmodel)
    assert type(qmodel.lm_head) is nn.Linear  # the head stays float
    assert type(qmodel.model.layers[0].mlp.down_proj).__name__ == "WeightOnlyLinear"  # packed storage
    with torch.no_grad():
        batch = token_batches(1, seed=9)[0]
        assert qp.metrics.sqnr_db(model(**batch).logits, qmodel(**batch).logits) > 15.0


def test_explicit_pairs_for_an_unrecognised_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)).eval()
    batches = [torch.randn(128, 32) for _ in range(3)]
    with pytest.raises(ValueError, match=r"could not pair layers \['0', '2'\].*pairs="):
        qp.algorithms.awq(net, batches, group_size=32)
    # ReLU commutes with a positive per-channel scale, so folding into the first Linear is exact.
    folded = awq_fold_scales(net, batches, group_size=32, pairs=[("0", ["2"])], clip=False)
    x = torch.randn(8, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
    assert list(folded.quantpilot_awq["alphas"]) == ["0 -> 2"]
    assert folded.quantpilot_awq["unscaled"] == ["0"]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"bits": 3}, ValueError, "bits must be 4, 6 or 8"),
        ({"group_size": 48}, ValueError, "PerGroup\\(size=48\\) does not divide"),
        ({"group_size": 0}, ValueError, "group_size must be"),
        ({"pairs": [("0", ["missing"])]}, ValueError, "'missing' is not a Linear"),
        ({"pairs": [("nothing", ["1"])]}, ValueError, "'nothing' is not a LayerNorm"),
        ({"pairs": [("1", ["1"])]}, ValueError, "produces 64 channels, the layers read 128"),
        ({"pairs": ["0"]}, TypeError, "each pair"),
        ({"pairs": [ScaleGroup("0", ("1",), inspect="2")]}, ValueError, "inspect='2' must name a module"),
        ({"pairs": [ScaleGroup("0", ("1",), inspect="1")]}, ValueError, "contains every layer of the pair"),
    ],
    ids=[
        "bits",
        "group-not-dividing",
        "group-zero",
        "unknown-layer",
        "bad-prev",
        "width-mismatch",
        "bad-pair-shape",
        "inspect-missing",
        "inspect-not-containing",
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        qp.algorithms.awq(salient_block(), inputs(4, seed=1), **{"group_size": 32, **kwargs})


def test_too_little_calibration_data_says_how_much():
    with pytest.raises(ValueError, match=f"saw 64 tokens, AWQ needs at least {MIN_CALIBRATION_TOKENS}"):
        qp.algorithms.awq(salient_block(), inputs(1, seed=1), group_size=32)
    with pytest.raises(ValueError, match="needs calibration batches"):
        qp.algorithms.awq(salient_block(), [], group_size=32)


def test_scale_group_key_and_save_load_round_trip(tmp_path):
    assert ScaleGroup("a", ("b", "c")).key == "a -> b, c"
    model, batches = tiny_gpt2(), token_batches(8)
    qmodel = qp.algorithms.awq(model, batches, bits=4, group_size=32)
    loaded = qp.load(tiny_gpt2(seed=3), qp.save(qmodel, tmp_path / "awq"))
    batch = token_batches(1, seed=4)[0]
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, qmodel(**batch).logits)


def test_tied_head_is_never_scaled_or_clipped():
    model = tiny_gpt2()
    embedding = model.transformer.wte.weight.detach().clone()
    folded = awq_fold_scales(model, token_batches(8), group_size=32, skip=())
    assert "lm_head" not in folded.quantpilot_awq["clipped"]
    assert torch.equal(folded.transformer.wte.weight, embedding)
