import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.analysis import CalibrationStatistics


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 6, generator=g) * 3 for _ in range(3)]


@pytest.mark.parametrize(
    "calibrator",
    ["minmax", {"kind": "histogram", "method": "entropy"}, {"kind": "histogram", "method": "mse"}],
    ids=["minmax", "entropy", "mse"],
)
def test_build_equals_calibrating_the_variant_itself(calibrator):
    net, data = _net(), _batches()
    stats = CalibrationStatistics(net, qp.Recipe(), data)  # calibrated with histogram/mse
    target = qp.Recipe(activation_calibrator=calibrator, skip=("2",))
    direct = qp.quantize(net, target)
    with qp.calibrate(direct):
        for x in data:
            direct(x)
    qp.freeze(direct)
    built = stats.build(target)
    assert qp.is_frozen(built)
    q_direct, q_built = direct[0].input_quantizer, built[0].input_quantizer
    torch.testing.assert_close(q_built.scale, q_direct.scale, rtol=0, atol=0)
    torch.testing.assert_close(q_built.zero_point, q_direct.zero_point, rtol=0, atol=0)
    assert isinstance(built[2], nn.Linear)


def test_minmax_recipe_keeps_a_histogram_for_other_candidates():
    net, data = _net(), _batches()
    stats = CalibrationStatistics(net, qp.Recipe(activation_calibrator="minmax"), data)
    direct = qp.quantize(net, qp.Recipe())
    with qp.calibrate(direct):
        for x in data:
            direct(x)
    qp.freeze(direct)
    built = stats.build(qp.Recipe())
    torch.testing.assert_close(built[2].input_quantizer.scale, direct[2].input_quantizer.scale, rtol=0, atol=0)


def test_statistics_reject_a_different_activation_spec():
    stats = CalibrationStatistics(_net(), qp.Recipe(), _batches())
    with pytest.raises(ValueError, match="different activation spec"):
        stats.build(qp.Recipe(activations=qp.QuantSpec("int8", symmetric=True)))


def test_empty_calibration_is_refused():
    with pytest.raises(ValueError, match="empty"):
        CalibrationStatistics(_net(), qp.Recipe(), [])


def test_kept_inputs_respect_the_budget():
    stats = CalibrationStatistics(_net(), qp.Recipe(), _batches(), keep_inputs=True, input_budget=100)
    assert sum(t.numel() for t in stats.inputs["0"]) <= 100 + 6
    assert sum(t.numel() for t in stats.inputs["0"]) >= 6


def test_smoothed_statistics_build_what_smoothquant_gives():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    data = [torch.randn(32, 16) * torch.linspace(0.1, 20, 16) for _ in range(3)]
    recipe = qp.Recipe(skip=("2",))
    stats = CalibrationStatistics(net, recipe, data, smoothing=0.8)
    assert sorted(stats.smoothing) == ["0"] and stats.alpha == 0.8
    expected = qp.algorithms.smoothquant(net, data, alpha=0.8, recipe=recipe)
    built = stats.build(recipe)
    x = torch.randn(64, 16) * 5
    assert torch.equal(built[0].input_smoothing, expected[0].input_smoothing)
    assert torch.equal(built(x), expected(x))
    assert not torch.equal(built(x), CalibrationStatistics(net, recipe, data).build(recipe)(x))


@pytest.mark.parametrize("alpha", [1.5, -0.1, True], ids=["above-one", "negative", "bool"])
def test_smoothing_alpha_is_checked(alpha):
    with pytest.raises(ValueError, match="alpha"):
        CalibrationStatistics(_net(), qp.Recipe(), _batches(), smoothing=alpha)
