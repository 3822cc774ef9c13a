"""GPTQ's shortcuts for 7B-wide layers: panel Hessians, flipped-Cholesky factor, shared Hessians, one dequantization."""

from __future__ import annotations

import pytest
import torch

from quantpilot.algorithms.gptq import HessianAccumulator, gptq_quantize_weight, hessian_factor
from quantpilot.algorithms.gptq_sequential import block_hessians, dequantized_once, gptq_block_layers
from quantpilot.nn.packed import weight_only_spec
from quantpilot.testing import tiny_causal_lm


@pytest.mark.parametrize("columns", [1024, 1030], ids=["panels-even", "panels-ragged"])
def test_wide_hessian_computes_the_upper_panels_and_mirrors_them(columns):
    x = torch.randn(40, columns, generator=torch.Generator().manual_seed(0))
    acc = HessianAccumulator(columns)
    acc.add(x[:15])
    acc.add(x[15:])
    h = acc.hessian
    torch.testing.assert_close(h, 2 * x.T @ x / 40, rtol=1e-5, atol=1e-5)
    lower = torch.tril(torch.ones(columns, columns, dtype=torch.bool), -1)
    step = -(-columns // HessianAccumulator.PANELS)
    off_panel = lower & ((torch.arange(columns)[:, None] // step) != (torch.arange(columns)[None, :] // step))
    assert torch.equal(h[off_panel], h.T[off_panel])  # below the diagonal panels: mirrored exactly
    acc.add(x[:1])  # adding after a read keeps the mean right
    torch.testing.assert_close(acc.hessian, 2 * torch.cat([x, x[:1]]).T @ torch.cat([x, x[:1]]) / 41,
                               rtol=1e-5, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
def test_factor_is_the_upper_cholesky_of_the_dampened_inverse(act_order):
    x = torch.randn(300, 1100, generator=torch.Generator().manual_seed(1))  # > 1024: the inverse by halves
    h = 2 * x.T @ x / 300
    f = hessian_factor(h, damp=0.01, act_order=act_order)
    damped = h[f.perm][:, f.perm] + 0.01 * torch.diag(h).mean() * torch.eye(1100)
    assert torch.equal(f.u, torch.triu(f.u)) and bool((f.u.diagonal() > 0).all())
    torch.testing.assert_close(f.u.T @ f.u @ damped, torch.eye(1100), rtol=0, atol=2e-3)


def test_a_given_factor_gives_the_same_codes_and_a_wrong_one_is_refused():
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(2))
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    h, spec = 2 * x.T @ x / 256, weight_only_spec(4, 32)
    alone = gptq_quantize_weight(w, h, spec)
    given = gptq_quantize_weight(w, h, spec, factor=hessian_factor(h))
    assert all(torch.equal(a, b) for a, b in zip(alone, given, strict=True))
    with pytest.raises(ValueError, match="pass factor=None"):
        gptq_quantize_weight(w, h, spec, damp=0.1, factor=hessian_factor(h))


def _llama_block_and_calls():
    model = tiny_causal_lm("llama")
    calls = []
    hook = model.model.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append((args, kwargs)), with_kwargs=True
    )
    with torch.no_grad():
        model(input_ids=torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(4)))
        model(input_ids=torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(5)))
    hook.remove()
    return model.model.layers[0], calls


def test_layers_fed_one_tensor_share_one_hessian_equal_to_their_own():
    block, calls = _llama_block_and_calls()
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]  # fmt: skip
    widths = {n: block.get_submodule(n).in_features for n in names}
    accs = block_hessians(block, widths, calls)
    assert accs["self_attn.q_proj"] is accs["self_attn.k_proj"] is accs["self_attn.v_proj"]
    assert accs["mlp.gate_proj"] is accs["mlp.up_proj"]
    assert len({id(a) for a in accs.values()}) == 4
    alone = block_hessians(block, {"self_attn.v_proj": widths["self_attn.v_proj"]}, calls)["self_attn.v_proj"]
    assert torch.equal(alone.hessian, accs["self_attn.v_proj"].hessian) and alone.tokens == 256


def test_replay_with_layers_dequantized_once_equals_the_packed_block_and_restores_it():
    block, calls = _llama_block_and_calls()
    widths = {"mlp.down_proj": block.mlp.down_proj.in_features, "mlp.up_proj": block.mlp.up_proj.in_features}
    gptq_block_layers(block, block_hessians(block, widths, calls), weight_only_spec(4, 32))
    with torch.no_grad():
        packed = block(*calls[0][0], **calls[0][1])[0]
        with dequantized_once(block, list(widths)):
            once = block(*calls[0][0], **calls[0][1])[0]
        with pytest.raises(RuntimeError, match="boom"), dequantized_once(block, list(widths)):
            raise RuntimeError("boom")
    assert torch.equal(packed, once)
    assert type(block.mlp.down_proj).__name__ == "WeightOnlyLinear"
