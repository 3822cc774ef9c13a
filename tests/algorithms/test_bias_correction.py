"""Empirical bias correction: removes the mean output shift, leaves inputs alone, says what is wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.algorithms import bias_correction


def _frozen(model: nn.Module, batches, recipe: qp.Recipe) -> nn.Module:
    qmodel = qp.quantize(model, recipe)
    with qp.calibrate(qmodel):
        for batch in batches:
            qmodel(batch)
    return qp.freeze(qmodel)


def test_single_layer_shift_equals_the_mean_error_exactly():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(16, 4))
    batches = [torch.randn(64, 16) + 0.5 for _ in range(3)]
    qmodel = _frozen(layer, batches, qp.Recipe(activations=qp.QuantSpec("int4", symmetric=False)))
    corrected = bias_correction(qmodel, layer, batches)
    x = torch.cat(batches)
    with torch.no_grad():
        expected_shift = (layer(x) - qmodel(x)).mean(dim=0)
        assert torch.allclose(corrected[0].bias - qmodel[0].bias, expected_shift, atol=1e-5)
        # On the calibration data the mean error per channel is now zero.
        assert (layer(x) - corrected(x)).mean(dim=0).abs().max() < 1e-5


def test_conv_layers_are_corrected_per_output_channel_and_input_is_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3, bias=False)).eval()
    batches = [torch.randn(8, 3, 10, 10) for _ in range(3)]
    qmodel = _frozen(model, batches, qp.Recipe(weights=qp.QuantSpec("int4", granularity=qp.PerChannel(0))))
    before = [p.clone() for p in qmodel.parameters()]
    corrected = bias_correction(qmodel, model, batches)
    assert all(torch.equal(a, b) for a, b in zip(before, qmodel.parameters(), strict=True))  # a copy changed
    assert corrected[2].bias is not None and corrected[2].bias.shape == (4,)  # created where there was none
    x = torch.randn(16, 3, 10, 10)
    with torch.no_grad():
        error = lambda m: (model(x) - m(x)).mean(dim=(0, 2, 3)).abs().mean()  # noqa: E731
        assert error(corrected) < 0.5 * error(qmodel)


def test_bad_input_is_refused():
    model = nn.Sequential(nn.Linear(4, 4))
    batches = [torch.randn(8, 4)]
    unfrozen = qp.quantize(model, "int8-static")
    with pytest.raises(ValueError, match="freeze"):
        bias_correction(unfrozen, model, batches)
    frozen = _frozen(model, batches, qp.Recipe.preset("int8-static"))
    with pytest.raises(ValueError, match="counterpart"):
        bias_correction(frozen, nn.Sequential(nn.Identity(), nn.Linear(4, 4)).get_submodule("1"), batches)
    with pytest.raises(ValueError, match="empty"):
        bias_correction(frozen, model, [])
    with pytest.raises(TypeError, match="nn.Module"):
        bias_correction(frozen, "model", batches)
