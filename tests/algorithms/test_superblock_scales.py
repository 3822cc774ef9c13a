"""6-bit tables on llama.cpp's Q6_K scale grid: the grid itself, the packed table, save/load, errors."""

from __future__ import annotations

import pytest
import torch

import quantpilot as qp
from quantpilot.algorithms.superblock_scales import quantize_on_superblock_grid
from quantpilot.nn.packed import WeightOnlyEmbedding, weight_only_spec
from quantpilot.nn.storage import quantize_weight

SPEC6 = weight_only_spec(6, 16, symmetric=True)


def _steps(scale: torch.Tensor, superblock_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per superblock: the step d (largest scale / its multiple) and every scale's multiple of it."""
    by_block = scale.reshape(scale.shape[0], -1, superblock_groups).double()
    top = by_block.amax(-1, keepdim=True)
    d = torch.full_like(top, float("nan"))
    for k in range(1, 128):  # the largest k whose step top / k divides every scale of the superblock
        multiples = by_block / (top / k)
        d = torch.where((multiples.round() == multiples).all(-1, keepdim=True), top / k, d)
    assert not bool(d.isnan().any()), "a superblock's scales share no step"
    return d, by_block / d


def test_scales_are_fp16_multiples_of_one_step_per_superblock():
    torch.manual_seed(0)
    w = torch.randn(6, 512) * torch.logspace(-3, 0, 6)[:, None]  # rows of very different magnitudes
    codes, scale, zero = quantize_on_superblock_grid(w, SPEC6, 256)
    assert scale.shape == (6, 32) and codes.dtype == torch.uint8 and int(codes.max()) <= 63
    assert torch.equal(scale.half().float(), scale) and bool((zero == 32).all())
    d, multiples = _steps(scale, 16)
    assert torch.equal(d.half().double(), d) and int(multiples.max()) <= 127 and int(multiples.min()) >= 1
    value = (codes.float() - 32) * scale.repeat_interleave(16, 1)
    plain = weight_only_spec(6, 16, symmetric=True)
    own_codes, own_scale, _ = quantize_weight(w, plain)
    own = (own_codes.float() - 32) * own_scale.repeat_interleave(16, 1)
    # The grid costs little against free fp16 group scales: within 10 % of their error.
    assert (value - w).pow(2).mean() <= 1.1 * (own - w).pow(2).mean()


def test_a_zero_superblock_keeps_zero_codes():
    w = torch.zeros(2, 256)
    w[1] = torch.linspace(-1, 1, 256)
    codes, scale, _ = quantize_on_superblock_grid(w, SPEC6, 256)
    assert bool((codes[0] == 32).all()) and bool((scale > 0).all())


def test_the_grid_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="superblocks of 256"):
        quantize_on_superblock_grid(torch.randn(2, 128), SPEC6, 256)
    with pytest.raises(ValueError, match="symmetric per-group"):
        quantize_on_superblock_grid(torch.randn(2, 256), weight_only_spec(6, 16), 256)
    with pytest.raises(ValueError, match="multiple of group_size"):
        quantize_on_superblock_grid(torch.randn(2, 256), SPEC6, 24)


def test_a_q6k_table_round_trips_with_its_tied_head(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(40, 256), torch.nn.Linear(256, 40, bias=False))
    net[1].weight = net[0].weight
    q = qp.algorithms.quantize_embeddings(net, bits=6, group_size=16, superblock=256)
    table = q[0]
    assert isinstance(table, WeightOnlyEmbedding) and table.weight_spec.dtype.value == "uint6"
    assert q[1].weight_packed is table.weight_packed and qp.recipe_of(q).name == "embeddings-w6-g16-sb256"
    codes, scale, _ = quantize_on_superblock_grid(net[0].weight, SPEC6, 256)
    ids = torch.tensor([[0, 5, 39]])
    expected = ((codes.float() - 32) * scale.repeat_interleave(16, 1))[ids]
    torch.testing.assert_close(q[0](ids), expected, rtol=0, atol=0)
    qp.save(q, tmp_path / "q")
    loaded = qp.load(net, tmp_path / "q")
    x = torch.randn(3, 256)
    assert torch.equal(loaded[1](x), q[1](x)) and torch.equal(loaded[0](ids), q[0](ids))
    assert table.weight_packed.shape == (40, 256)  # 6-bit codes one per byte


def test_bad_superblock_requests_get_clear_errors():
    emb = torch.nn.Sequential(torch.nn.Embedding(10, 256))
    with pytest.raises(ValueError, match="superblock must be None or a multiple"):
        qp.algorithms.quantize_embeddings(emb, bits=6, group_size=16, superblock=40)
    with pytest.raises(ValueError, match="superblock must be None or a multiple"):
        qp.algorithms.quantize_embeddings(emb, bits=6, group_size=None, superblock=256)
    with pytest.raises(ValueError, match="float16"):
        qp.algorithms.quantize_embeddings(emb, bits=6, group_size=16, superblock=256, scale_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bits must be 4, 6 or 8"):
        qp.algorithms.quantize_embeddings(emb, bits=5, group_size=16)
    with pytest.raises(ValueError, match="superblocks of 256"):
        qp.algorithms.quantize_embeddings(torch.nn.Sequential(torch.nn.Embedding(10, 128)), 6, 16, superblock=256)


def test_hf_export_refuses_a_6_bit_table_in_one_line(tmp_path):
    from quantpilot.testing import tiny_causal_lm

    q = qp.algorithms.quantize_embeddings(qp.algorithms.rtn(tiny_causal_lm("llama"), 4, 32), bits=6, group_size=16)
    with pytest.raises(ValueError, match="6-bit codes; format='hf'"):
        qp.export_llm(q, None, tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf").exists()
