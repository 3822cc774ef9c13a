"""GPTQ: the OBS column update by hand, lazy batches equal eager updates, error below RTN, the model path."""

from __future__ import annotations

import pytest
import torch

import quantpilot as qp
from quantpilot.algorithms.gptq import HessianAccumulator, gptq_quantize_weight
from quantpilot.algorithms.rtn import quantize_weight
from quantpilot.nn.packed import WeightOnlyLinear, weight_only_spec
from quantpilot.primitives import dequantize, quantize
from quantpilot.testing import tiny_causal_lm


def correlated_inputs(tokens: int, columns: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(columns, columns, generator=gen) / columns**0.5 + torch.eye(columns)
    return torch.randn(tokens, columns, generator=gen) @ mix


def test_first_column_update_is_the_obs_formula():
    # Per-channel grid fixed from the float rows (extremes in column 2). After quantizing column 0 the
    # OBS step moves column 1 by -(w0 - q0) * [H^-1]_01 / [H^-1]_00; column 1 is then rounded on that grid.
    w = torch.tensor([[0.31, -0.46, 2.0, -1.0], [1.07, 0.61, 3.0, -2.0], [-0.82, 0.93, 1.5, -1.5]])
    h = torch.tensor([[2.0, 1.9, 0.1, 0.0], [1.9, 2.0, 0.2, 0.1], [0.1, 0.2, 1.0, 0.3], [0.0, 0.1, 0.3, 1.0]])
    spec = weight_only_spec(4, None)
    codes, scale, zero = gptq_quantize_weight(w, h, spec, damp=0.0)
    _, s_ref, z_ref = quantize_weight(w, spec)  # the per-row grid of the float weight
    s_ref, z_ref = s_ref[:, 0], z_ref[:, 0]
    q0 = quantize(w[:, :1], s_ref, z_ref, spec)
    assert torch.equal(codes[:, 0], q0[:, 0])  # column 0: plain rounding
    h_inv = torch.linalg.inv(h)
    err0 = w[:, 0] - dequantize(q0, s_ref, z_ref, spec)[:, 0]
    moved = w[:, 1] - err0 * h_inv[0, 1] / h_inv[0, 0]
    expected1 = quantize(moved.unsqueeze(1), s_ref, z_ref, spec)[:, 0]
    assert torch.equal(codes[:, 1], expected1)
    assert not torch.equal(expected1, quantize(w[:, 1:2], s_ref, z_ref, spec)[:, 0])  # the update mattered
    torch.testing.assert_close(scale[:, 0], s_ref)


def test_identity_hessian_gives_round_to_nearest():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    spec = weight_only_spec(4, 32)
    codes, scale, zero = gptq_quantize_weight(w, torch.eye(64), spec)
    rtn_codes, rtn_scale, rtn_zero = quantize_weight(w, spec)
    assert torch.equal(codes, rtn_codes) and torch.equal(scale, rtn_scale) and torch.equal(zero, rtn_zero)


@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
def test_lazy_block_updates_equal_column_by_column_updates(act_order):
    x = correlated_inputs(512, 96)
    w = torch.randn(8, 96, generator=torch.Generator().manual_seed(1))
    h = 2 * x.T @ x / x.shape[0]
    spec = weight_only_spec(4, 32)
    eager = gptq_quantize_weight(w, h, spec, block_size=1, act_order=act_order)
    lazy = gptq_quantize_weight(w, h, spec, block_size=128, act_order=act_order)
    mid = gptq_quantize_weight(w, h, spec, block_size=40, act_order=act_order)
    # Same algebra, different float summation order: codes agree except for rare rounding ties.
    for other in (lazy, mid):
        assert (eager[0] != other[0]).float().mean() < 0.005
        torch.testing.assert_close(eager[1], other[1], rtol=2e-3, atol=0)


@pytest.mark.parametrize(
    "group, act_order", [(32, False), (None, False), (32, True)], ids=["g32", "per-channel", "g32-act"]
)
def test_gptq_output_error_is_below_rtn(group, act_order):
    x = correlated_inputs(1024, 128, seed=2)
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(4))
    spec = weight_only_spec(4, group)
    h = 2 * x.T @ x / x.shape[0]
    groups = 1 if group is None else 128 // group

    def output_error(codes, scale, zero):
        s, z = scale.repeat_interleave(128 // groups, 1), zero.repeat_interleave(128 // groups, 1)
        return ((x @ ((codes.float() - z) * s - w).T) ** 2).mean()

    gptq_err = output_error(*gptq_quantize_weight(w, h, spec, act_order=act_order))
    rtn_err = output_error(*quantize_weight(w, spec))
    assert gptq_err < 0.8 * rtn_err


def test_hessian_accumulator_is_the_mean_over_all_tokens():
    x = torch.randn(10, 4)
    acc = HessianAccumulator(4)
    acc.add(x[:3])
    acc.add(x[3:].reshape(1, 7, 4))
    torch.testing.assert_close(acc.hessian, 2 * x.T @ x / 10)


def test_gptq_on_tiny_llama_beats_rtn_and_round_trips(tmp_path):
    model = tiny_causal_lm("llama")
    gen = torch.Generator().manual_seed(0)
    # Calibration and evaluation on one fixed "language": a random bigram chain, so inputs are structured.
    table = torch.randint(0, 512, (512, 4), generator=gen)

    def sample(n):
        ids = [int(torch.randint(0, 512, (1,), generator=gen))]
        for _ in range(n - 1):
            ids.append(int(table[ids[-1], torch.randint(0, 4, (1,), generator=gen)]))
        return torch.tensor([ids])

    calib = [{"input_ids": sample(64)} for _ in range(16)]  # 1024 tokens: H well estimated for 256 inputs
    held_out = torch.cat([sample(64) for _ in range(2)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = qp.algorithms.gptq(model, calib, bits=4, group_size=32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(q.model.layers[1].self_attn.o_proj, WeightOnlyLinear)
    with torch.no_grad():
        ref = model(input_ids=held_out).logits
        gptq_mse = ((q(input_ids=held_out).logits - ref) ** 2).mean()
        rtn_mse = ((qp.algorithms.rtn(model, 4, 32)(input_ids=held_out).logits - ref) ** 2).mean()
    assert gptq_mse < rtn_mse
    loaded = qp.load(tiny_causal_lm("llama", seed=7), qp.save(q, tmp_path / "gptq"))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=held_out).logits, q(input_ids=held_out).logits)


def test_gptq_rejects_bad_input():
    model = tiny_causal_lm("gpt2")
    few = [{"input_ids": torch.zeros(1, 16, dtype=torch.long)}]
    with pytest.raises(ValueError, match="at least 512 calibration tokens"):
        qp.algorithms.gptq(model, few)
    enough = few * 32
    with pytest.warns(UserWarning, match="lie outside it and get round-to-nearest"):
        q = qp.algorithms.gptq(model, enough, skip=())
    assert type(q.lm_head).__name__ == "WeightOnlyLinear"  # outside the blocks: RTN, as the warning says
    with pytest.raises(TypeError, match="list of model inputs"):
        qp.algorithms.gptq(model, {"input_ids": torch.zeros(1, 16, dtype=torch.long)})
    flat = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    with pytest.raises(ValueError, match="no nn.ModuleList of repeated blocks"):
        qp.algorithms.gptq(flat, [torch.randn(16, 8)], group_size=None)
    with pytest.raises(ValueError, match="not positive definite"):
        indefinite = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
        gptq_quantize_weight(torch.ones(2, 2), indefinite, weight_only_spec(4, None), damp=0)
