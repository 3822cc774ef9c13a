"""Outlier injection: the float function is unchanged while the norm outputs gain outlier channels."""

import pytest
import torch
from algorithms._tiny_lms import tiny_gpt2, tiny_llama, token_batches
from torch import nn

import quantpilot as qp
from quantpilot_testbed.outlier_injection import inject_outlier_channels


def norm_output_amax(model, batch, norm_name):
    seen = {}
    handle = model.get_submodule(norm_name).register_forward_hook(lambda m, i, o: seen.setdefault("y", o.detach()))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    return seen["y"].abs().amax(dim=(0, 1))


@pytest.mark.parametrize(
    "build,norm",
    [(tiny_gpt2, "transformer.h.0.ln_2"), (tiny_llama, "model.layers.1.input_layernorm")],
    ids=["gpt2", "llama"],
)
def test_float_model_unchanged_and_channels_scaled(build, norm):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = token_batches(1)[0]
    hot = inject_outlier_channels(model, batch, channels=[3, 40], factor=60.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # original untouched
    with torch.no_grad():
        for b in token_batches(2, seed=4):
            torch.testing.assert_close(hot(**b).logits, model(**b).logits, rtol=1e-4, atol=1e-4)
    ratio = norm_output_amax(hot, batch, norm) / norm_output_amax(model, batch, norm)
    torch.testing.assert_close(ratio[[3, 40]], torch.full((2,), 60.0), rtol=1e-4, atol=1e-4)
    others = torch.ones_like(ratio, dtype=torch.bool)
    others[[3, 40]] = False
    torch.testing.assert_close(ratio[others], torch.ones(int(others.sum())), rtol=1e-5, atol=1e-5)
    assert norm in hot.quantpilot_outliers["norms"]


def test_per_tensor_int8_suffers_and_llm_int8_holds():
    model = tiny_gpt2()
    hot = inject_outlier_channels(model, token_batches(1)[0], n_channels=3, factor=80.0)
    recipe = qp.Recipe.preset("int8-static").replace(module_types=("Linear", "Conv1D"), skip=("lm_head",))
    calib = token_batches(4)
    sqnr = {}
    for name, m in {"plain": model, "injected": hot}.items():
        q = qp.quantize(m, recipe)
        with qp.calibrate(q):
            for b in calib:
                q(**b)
        qp.freeze(q)
        b = token_batches(1, seed=9)[0]
        with torch.no_grad():
            sqnr[name] = qp.metrics.sqnr_db(model(**b).logits, q(**b).logits)
            if name == "injected":
                sqnr["llm_int8"] = qp.metrics.sqnr_db(model(**b).logits, qp.algorithms.llm_int8(hot)(**b).logits)
    assert sqnr["injected"] < sqnr["plain"] - 6.0
    assert sqnr["llm_int8"] > sqnr["injected"] + 6.0


def test_random_channels_are_seeded_and_inplace_changes_the_model():
    model = tiny_llama()
    batch = token_batches(1)[0]
    a = inject_outlier_channels(model, batch, n_channels=5, seed=1).quantpilot_outliers["channels"]
    b = inject_outlier_channels(model, batch, n_channels=5, seed=1).quantpilot_outliers["channels"]
    assert a == b and len(a) == 5
    assert inject_outlier_channels(model, batch, channels=[0], inplace=True) is model


@pytest.mark.parametrize(
    "kwargs,match",
    [({"factor": 0.0}, "positive"), ({"channels": [64]}, r"\[0, 64\)"), ({"n_channels": 0}, "n_channels")],
    ids=["factor", "channel-range", "n-channels"],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inject_outlier_channels(tiny_gpt2(), token_batches(1)[0], **kwargs)


def test_model_without_norms():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no LayerNorm/RMSNorm"):
        inject_outlier_channels(net, torch.randn(2, 4))
