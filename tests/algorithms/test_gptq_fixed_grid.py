"""GPTQ on a W8A8 layer's own grid: codes on that grid, less output error than rounding, the GPTQ step after
SmoothQuant inside the pipeline."""

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.algorithms.gptq_fixed_grid import gptq_installed_layers, gptq_on_grid, input_hessians
from quantpilot.nn import QuantLinear
from quantpilot.spec import PerChannel, QuantSpec
from tests.algorithms.test_smoothquant import outlier_batches, outlier_mlp

INT8 = QuantSpec("int8", symmetric=True, narrow_range=True, granularity=PerChannel(0))


def correlated_inputs(rows=512, width=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(width, width, generator=g) / width**0.5 + torch.eye(width)
    return torch.randn(rows, width, generator=g) @ mix


def rtn(weight, scale):
    return (weight / scale[:, None]).round().clamp(-127, 127) * scale[:, None]


def test_codes_lie_on_the_given_grid_and_beat_rounding_on_correlated_inputs():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    x = correlated_inputs()
    scale = w.abs().amax(1) / 127 * 8  # a coarse grid, so that rounding error is large enough to see
    out = gptq_on_grid(w, x.T @ x / len(x), scale, torch.zeros(16), INT8)
    codes = out / scale[:, None]
    torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
    assert codes.abs().max() <= 127
    gptq_error = (x @ (out - w).T).pow(2).mean()
    rtn_error = (x @ (rtn(w, scale) - w).T).pow(2).mean()
    assert gptq_error < 0.7 * rtn_error


def test_an_identity_hessian_is_round_to_nearest():
    w = torch.randn(4, 8)
    scale = w.abs().amax(1) / 127
    torch.testing.assert_close(gptq_on_grid(w, torch.eye(8), scale, torch.zeros(4), INT8), rtn(w, scale))


@pytest.mark.parametrize(
    "spec,match",
    [(QuantSpec("uint4", symmetric=False, granularity=qp.PerGroup(8)), "per-output-channel"),
     (QuantSpec("fp8_e4m3"), "integer")],
    ids=["grouped", "fp8"],
)  # fmt: skip
def test_other_grids_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        gptq_on_grid(torch.randn(2, 8), torch.eye(8), torch.ones(2), torch.zeros(2), spec)


def test_installed_layers_keep_their_grid_through_freeze():
    layer = QuantLinear.from_float(nn.Linear(32, 8))
    hessians = input_hessians(nn.Sequential(layer), ["0"], [correlated_inputs()])
    scale = layer.weight_qparams()[0].clone()
    net = nn.Sequential(layer)
    assert gptq_installed_layers(net, hessians) == ["0"]
    expected = layer.weight.detach().clone()
    layer.input_quantizer.spec = None  # weight-only here: nothing to calibrate
    layer.freeze()
    torch.testing.assert_close(layer.weight_scale.reshape(-1), scale.reshape(-1))
    torch.testing.assert_close(layer.dequantized_weight(), expected)


def weight_error(qmodel, model, batches):
    """|X_s (W_q - W_s)^T|^2 of the first layer: its rounding error as its own (smoothed) inputs see it."""
    layer, smoothing = qmodel[0], qmodel[0].input_smoothing
    x = torch.cat(batches) / smoothing
    w = model[0].weight.detach() * smoothing
    return float((x @ (layer.dequantized_weight() - w).T).pow(2).mean())


def test_gptq_after_smoothquant_lowers_the_weight_error_and_leaves_the_float_model_alone():
    # Correlated inputs with outlier channels (what transformer activations look like): GPTQ's gain over
    # rounding comes from the correlations.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    outliers = torch.ones(32)
    outliers[[3, 17]] = 30.0
    batches = list((correlated_inputs(256) * outliers).split(64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    smooth = qp.Recipe.preset("int8-static").replace(steps=(qp.steps.SmoothQuant(alpha=0.5),))
    with_gptq = smooth.replace(steps=(*smooth.steps, qp.steps.GPTQ()))
    errors = {}
    for name, recipe in {"smoothquant": smooth, "smoothquant+gptq": with_gptq}.items():
        qmodel = qp.api.run_pipeline(model, recipe, batches)
        errors[name] = weight_error(qmodel, model, batches)
    assert errors["smoothquant+gptq"] < 0.7 * errors["smoothquant"], errors
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert qp.recipe_of(qmodel).steps[-1] == qp.steps.GPTQ()


def test_a_model_too_large_for_held_hessians_gets_a_one_line_error(monkeypatch):
    import quantpilot.algorithms.gptq_fixed_grid as fixed

    monkeypatch.setattr(fixed, "MAX_HESSIAN_BYTES", 1000)
    with pytest.raises(ValueError, match="weight-only GPTQ"):
        input_hessians(outlier_mlp(), ["0", "2"], outlier_batches(1))
