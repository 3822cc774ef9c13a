"""LLM.int8(): the decomposition's arithmetic, outlier accounting, whole-model conversion, errors, save."""

import pytest
import torch
from torch.nn import functional as F

import quantpilot as qp
from quantpilot.nn.llm_int8_linear import LLMInt8Linear

from ._tiny_lms import tiny_gpt2, tiny_llama, token_batches


def dequantized_weight(layer):
    return layer.weight_int.float() * layer.weight_scale.unsqueeze(1)


def test_threshold_zero_runs_everything_in_float():
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 10)
    layer = LLMInt8Linear.from_float(lin, threshold=0.0)
    x = torch.randn(5, 24)
    # Every column is an outlier: exactly the float matmul against the stored weight.
    torch.testing.assert_close(layer(x), F.linear(x, dequantized_weight(layer), lin.bias), rtol=1e-6, atol=1e-6)
    assert layer.outlier_fraction == 1.0
    # And close to the original float layer: the only error is int8 per-channel weight rounding.
    assert (layer(x) - lin(x)).abs().max() < 0.01


def test_weight_codes_are_absmax_per_output_channel():
    w = torch.tensor([[1.27, -0.5, 0.0], [-2.54, 2.0, 1.0]])
    layer = LLMInt8Linear(w, None)
    torch.testing.assert_close(layer.weight_scale, torch.tensor([0.01, 0.02]))
    assert layer.weight_int.tolist() == [[127, -50, 0], [-127, 100, 50]]


def test_decomposition_matches_hand_computed_case():
    # Column 1 holds an outlier (7 >= 6): it runs in float; columns 0 and 2 in int8 with row absmax scales.
    w = torch.tensor([[1.27, 0.5, -1.27], [0.254, -1.27, 0.127]])
    layer = LLMInt8Linear(w, torch.tensor([0.5, -0.5]), threshold=6.0)
    x = torch.tensor([[1.27, 7.0, -0.635], [0.0, 1.0, 2.54]])
    w_deq = dequantized_weight(layer)
    # Row-wise int8 of the non-outlier part: scales 1.27/127 and 2.54/127, codes exact here.
    xq = torch.tensor([[127.0, 0.0, -64.0], [0.0, 0.0, 127.0]])  # -0.635/0.01 = -63.5 rounds half to even -> -64
    sx = torch.tensor([0.01, 0.02])
    int_part = (xq @ layer.weight_int.float().t()) * sx[:, None] * layer.weight_scale[None, :]
    float_part = x[:, [1]] @ w_deq[:, [1]].t()
    torch.testing.assert_close(layer(x), int_part + float_part + layer.bias, rtol=1e-6, atol=1e-6)
    assert layer.outlier_fraction == pytest.approx(1 / 3)


def test_outlier_columns_hold_where_plain_int8_fails():
    torch.manual_seed(1)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(16, 64)
    x[:, [5, 40]] *= 60.0
    ref = lin(x)
    mixed = LLMInt8Linear.from_float(lin, threshold=6.0)(x)
    everything_int8 = LLMInt8Linear.from_float(lin, threshold=1e9)(x)
    sqnr = lambda y: qp.metrics.sqnr_db(ref, y)
    assert sqnr(mixed) > 35.0
    assert sqnr(mixed) > sqnr(everything_int8) + 10.0


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2-conv1d", "llama"])
def test_whole_decoder_converts_and_stays_close(build):
    model = build()
    batch = token_batches(1)[0]
    qmodel = qp.algorithms.llm_int8(model, threshold=6.0)
    layers = [m for m in qmodel.modules() if isinstance(m, LLMInt8Linear)]
    assert layers and not any(isinstance(m, LLMInt8Linear) for m in model.modules())  # original untouched
    assert not isinstance(qmodel.lm_head, LLMInt8Linear)  # the head stays float by default
    with torch.no_grad():
        ref, out = model(**batch).logits, qmodel(**batch).logits
    assert qp.metrics.sqnr_db(ref, out) > 30.0
    frac = qp.algorithms.outlier_fraction(qmodel)
    assert 0.0 <= frac < 0.5
    per_layer = qp.algorithms.outlier_fraction(qmodel, per_layer=True)
    assert len(per_layer) == len(layers)
    qp.algorithms.reset_outlier_stats(qmodel)
    assert qp.algorithms.outlier_fraction(qmodel) == 0.0


def test_bf16_input_keeps_its_dtype():
    layer = LLMInt8Linear.from_float(torch.nn.Linear(8, 4))
    assert layer(torch.randn(2, 3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: qp.algorithms.llm_int8(torch.nn.Sequential(torch.nn.Linear(4, 4)), threshold=-1), ValueError, ">= 0"),
        (lambda: qp.algorithms.llm_int8(torch.nn.Sequential(torch.nn.ReLU())), ValueError, "no Linear"),
        (lambda: qp.algorithms.llm_int8("model"), TypeError, "nn.Module"),
        (lambda: qp.algorithms.outlier_fraction(torch.nn.Linear(2, 2)), ValueError, "no LLM.int8"),
        (lambda: LLMInt8Linear.from_float(torch.nn.Linear(4, 2))(torch.randn(2, 5)), ValueError, "4 features"),
    ],
    ids=["negative-threshold", "no-linear", "not-a-module", "fraction-of-float-model", "wrong-width"],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_save_load_round_trip(tmp_path):
    model = tiny_gpt2()
    qmodel = qp.algorithms.llm_int8(model, threshold=4.0)
    loaded = qp.load(tiny_gpt2(seed=7), qp.save(qmodel, tmp_path / "llm-int8"))
    layers = [m for m in loaded.modules() if isinstance(m, LLMInt8Linear)]
    assert len(layers) == len([m for m in qmodel.modules() if isinstance(m, LLMInt8Linear)])
    assert all(float(m.threshold) == 4.0 for m in layers)
    batch = token_batches(1, seed=2)[0]
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, qmodel(**batch).logits)
