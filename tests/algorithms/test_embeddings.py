"""quantize_embeddings: packed token tables, tied heads sharing their codes, save/load, sizes, errors."""

from __future__ import annotations

import pytest
import torch

import quantpilot as qp
from quantpilot.nn.packed import WeightOnlyEmbedding, WeightOnlyLinear, weight_only_spec
from quantpilot.testing import tiny_causal_lm


def _hand_dequantized(weight: torch.Tensor, bits: int, group: int | None) -> torch.Tensor:
    """Asymmetric min/max RTN per row group, written out without quantpilot's primitives."""
    rows, cols = weight.shape
    g = cols if group is None else group
    w = weight.reshape(rows, cols // g, g)
    lo = w.amin(-1, keepdim=True).clamp(max=0)
    hi = w.amax(-1, keepdim=True).clamp(min=0)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).half().float()
    zero = (-lo / scale).round().clamp(0, qmax)
    q = (w / scale + zero).round().clamp(0, qmax)
    return ((q - zero) * scale).reshape(rows, cols)


@pytest.mark.parametrize("bits, group", [(4, 32), (8, None)], ids=["w4g32", "w8row"])
def test_lookup_returns_the_quantized_rows(bits, group):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(50, 64))
    q = qp.algorithms.quantize_embeddings(net, bits=bits, group_size=group)
    ids = torch.tensor([[3, 7, 3], [49, 0, 12]])
    expected = _hand_dequantized(net[0].weight.detach(), bits, group)[ids]
    torch.testing.assert_close(q(ids), expected, rtol=0, atol=1e-6)
    assert isinstance(q[0], WeightOnlyEmbedding) and type(net[0]) is torch.nn.Embedding  # original untouched


def test_tied_head_reads_the_same_codes_and_round_trips(tmp_path):
    model = tiny_causal_lm("gpt2")
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    q = qp.algorithms.quantize_embeddings(qp.algorithms.rtn(model, bits=4, group_size=64), bits=4, group_size=64)
    wte, head = q.transformer.wte, q.lm_head
    assert isinstance(head, WeightOnlyLinear) and head.tied_to == "transformer.wte"
    assert head.weight_packed is wte.weight_packed and head.weight_scale is wte.weight_scale
    torch.testing.assert_close(head.quantized_weight(torch.float32), wte.quantized_weight(torch.float32))
    assert q.quantpilot_recipe.name.endswith("+emb-w4-g64")
    qp.save(q, tmp_path / "q")
    loaded = qp.load(tiny_causal_lm("gpt2", seed=1), tmp_path / "q")
    assert loaded.lm_head.weight_packed is loaded.transformer.wte.weight_packed  # the tie survives loading
    with torch.no_grad():
        assert torch.equal(q(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_checkpoint_shrinks_with_the_table(tmp_path):
    # tiny_causal_lm: 512x128 tied table + 2 blocks; with the table quantized, the file must be much smaller
    # than with RTN alone, and the tied head must not store a second copy.
    model = tiny_causal_lm("gpt2")
    linear_only = qp.algorithms.rtn(model, bits=4, group_size=64)
    both = qp.algorithms.quantize_embeddings(linear_only, bits=4, group_size=64, skip=("transformer.wpe",))
    qp.save(linear_only, tmp_path / "a")
    qp.save(both, tmp_path / "b")
    size_a = (tmp_path / "a" / "model.safetensors").stat().st_size
    size_b = (tmp_path / "b" / "model.safetensors").stat().st_size
    table_fp32 = 512 * 128 * 4
    table_w4 = 512 * 128 // 2 + 2 * 512 * 2 * 2  # codes + fp16 scale and zero per 64-feature group
    assert size_a - size_b == pytest.approx(table_fp32 - table_w4, abs=2048)


def test_embedding_only_model_round_trips(tmp_path):
    model = tiny_causal_lm("llama")
    q = qp.algorithms.quantize_embeddings(model, bits=8, group_size=None)
    assert not any(type(m) is torch.nn.Embedding for m in q.modules())
    qp.save(q, tmp_path / "q")
    loaded = qp.load(tiny_causal_lm("llama", seed=1), tmp_path / "q")
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(q(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_engine_leaves_the_table_as_a_lookup():
    q = qp.algorithms.quantize_embeddings(qp.algorithms.rtn(tiny_causal_lm("gpt2"), bits=8, group_size=None))
    runner = qp.engines.compile(q, engine="torch-int8")
    assert "lm_head" in runner.integer_layers
    assert "lookup" in runner.fallback_layers["transformer.wte"]
    ids = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(runner(input_ids=ids).logits, q(input_ids=ids).logits, rtol=2e-2, atol=2e-2)


def test_bad_input_gets_clear_errors():
    emb = torch.nn.Sequential(torch.nn.Embedding(10, 48))
    with pytest.raises(ValueError, match="does not divide"):
        qp.algorithms.quantize_embeddings(emb, bits=4, group_size=32)
    with pytest.raises(ValueError, match="no nn.Embedding"):
        qp.algorithms.quantize_embeddings(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="max_norm"):
        qp.algorithms.quantize_embeddings(torch.nn.Sequential(torch.nn.Embedding(10, 8, max_norm=1.0)), group_size=None)
    with pytest.raises(TypeError, match="sequences of patterns"):
        qp.algorithms.quantize_embeddings(emb, group_size=None, skip="0")
    with pytest.raises(TypeError):
        qp.algorithms.quantize_embeddings("model")
    with pytest.raises(TypeError, match="integer token ids"):
        qp.algorithms.quantize_embeddings(emb, group_size=None)(torch.ones(2))
    table = WeightOnlyEmbedding(4, 8, weight_only_spec(8, None))
    with pytest.raises(ValueError, match="cannot tie"):
        WeightOnlyLinear(4, 8, weight_only_spec(8, None)).tie_to(table, "t")


def test_a_bf16_table_loads_as_bf16(tmp_path):
    net = torch.nn.Sequential(torch.nn.Embedding(20, 32)).to(torch.bfloat16)
    q = qp.algorithms.quantize_embeddings(net, bits=8, group_size=None)
    ids = torch.tensor([[1, 5, 19]])
    assert q(ids).dtype == torch.bfloat16
    qp.save(q, tmp_path / "q")
    loaded = qp.load(torch.nn.Sequential(torch.nn.Embedding(20, 32)).to(torch.bfloat16), tmp_path / "q")
    assert loaded(ids).dtype == torch.bfloat16 and torch.equal(loaded(ids), q(ids))


def test_damaged_saved_entries_get_clear_errors():
    table = WeightOnlyEmbedding(10, 8, weight_only_spec(8, None))
    head = WeightOnlyLinear(8, 10, weight_only_spec(8, None))
    for layer in (table, head):
        entry = {"weights": layer.weight_spec.to_dict(), "config": layer.saved_config()}
        del entry["config"]["scale_dtype"]
        with pytest.raises(ValueError, match=f"{type(layer).__name__} lacks 'scale_dtype'"):
            type(layer).from_saved(None, entry)
    entry = {"weights": table.weight_spec.to_dict(), "config": {**table.saved_config(), "output_dtype": "int8"}}
    with pytest.raises(ValueError, match="output_dtype"):
        WeightOnlyEmbedding.from_saved(None, entry)
