"""RTN weight-only quantization: hand-computed grids, packed sizes, save/load, the original left alone."""

from __future__ import annotations

import pytest
import torch

import quantpilot as qp
from quantpilot.algorithms.rtn import quantize_weight
from quantpilot.nn.packed import WeightOnlyLinear, weight_only_spec
from quantpilot.testing import tiny_causal_lm


def test_quantize_weight_matches_the_reference_min_max_grid():
    # One group of 4: min -1, max 2 -> scale 3/15 = 0.2, zero = round(1 / 0.2) = 5 (as GPTQ's Quantizer).
    w = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
    codes, scale, zero = quantize_weight(w, weight_only_spec(4, 4))
    s = torch.tensor(0.2).half().float().item()
    assert scale.tolist() == [[s]] and zero.tolist() == [[5.0]]
    expected = torch.clamp(torch.round(w / s) + 5, 0, 15)
    assert codes.tolist() == expected.to(torch.uint8).tolist()
    # The grid spans the data: the extremes come back to within half a step.
    back = (codes.float() - zero) * scale
    assert (back - w).abs().max() <= s / 2 + 1e-6


def test_quantize_weight_groups_are_independent():
    w = torch.cat([torch.randn(3, 32), 100 * torch.randn(3, 32)], dim=1)
    _, scale, _ = quantize_weight(w, weight_only_spec(4, 32))
    assert scale.shape == (3, 2) and bool((scale[:, 1] > 20 * scale[:, 0]).all())


@pytest.mark.parametrize("kind", ["gpt2", "llama"], ids=["gpt2-conv1d", "llama-linear"])
def test_rtn_w4_g128_on_a_tiny_lm(kind, tmp_path):
    model = tiny_causal_lm(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel = qp.algorithms.rtn(model, bits=4, group_size=128)
    # The original is untouched.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    layers = [m for m in qmodel.modules() if isinstance(m, WeightOnlyLinear)]
    assert len(layers) == (8 if kind == "gpt2" else 14)  # 4 per GPT-2 block, 7 per Llama block; head stays float
    assert isinstance(qmodel.lm_head, torch.nn.Linear)
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = model(input_ids=ids).logits, qmodel(input_ids=ids).logits
    # 4-bit noise on a random model: clearly changed, still correlated.
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)
    assert 0.9 < cos < 1.0
    # Save / load onto a differently seeded float model reproduces the outputs bit for bit.
    loaded = qp.load(tiny_causal_lm(kind, seed=9), qp.save(qmodel, tmp_path / "q"))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, out)
    w4_bytes = sum(p.stat().st_size for p in (tmp_path / "q").iterdir())
    assert w4_bytes < 0.5 * sum(t.numel() * 4 for t in before.values())


def test_rtn_w8_per_channel_stays_within_half_a_step():
    model = tiny_causal_lm("llama")
    qmodel = qp.algorithms.rtn(model, bits=8, group_size=None)
    layer = qmodel.model.layers[0].mlp.down_proj
    assert layer.weight_packed.shape == (128, 256) and layer.weight_scale.shape == (128, 1)
    w = model.model.layers[0].mlp.down_proj.weight
    step = (w.amax(1) - w.amin(1)) / 255
    err = (layer.quantized_weight(torch.float32) - w).abs().amax(1)
    # Round to nearest: half a step, plus the fp16 rounding of the scale (<= 2**-11 relative) over 255 codes.
    assert bool((err <= step * (0.5 + 255 * 2**-11) + 1e-7).all())


def test_rtn_inplace_changes_the_model_itself():
    model = tiny_causal_lm("gpt2")
    assert qp.algorithms.rtn(model, inplace=True) is model
    assert isinstance(model.transformer.h[0].mlp.c_fc, WeightOnlyLinear)


def test_rtn_rejects_bad_input():
    model = torch.nn.Sequential(torch.nn.Linear(100, 4))
    with pytest.raises(ValueError, match="group_size=128 does not divide"):
        qp.algorithms.rtn(model)
    with pytest.raises(ValueError, match="bits"):
        qp.algorithms.rtn(model, bits=2, group_size=None)
    with pytest.raises(ValueError, match="no nn.Linear"):
        qp.algorithms.rtn(model, layers=("nothing*",))
    with pytest.raises(TypeError, match="sequences of patterns"):
        qp.algorithms.rtn(model, skip="0")
    with pytest.raises(ValueError, match="already quantized"):
        qp.algorithms.rtn(qp.algorithms.rtn(model, group_size=None), group_size=None)
