import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.analysis import CalibrationStatistics, sensitivity


def _setup():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    ).eval()
    with torch.no_grad():
        # A huge outlier on an input that is always 0 (ReLU of -1): the float model does not change, but
        # per-channel int8 rounds every other weight of row 5 to zero, so layer 2 alone is broken.
        net[0].weight[7].zero_()
        net[0].bias[7] = -1.0
        net[2].weight[5, 7] = 300.0
    calib = [torch.randn(64, 16)]
    test = torch.randn(256, 16)
    with torch.no_grad():
        reference = net(test)

    def score(model):  # higher is better: negative output MSE against FP32
        with torch.no_grad():
            return -float((model(test) - reference).pow(2).mean())

    return net, calib, score


@pytest.mark.parametrize("mode", ["one-at-a-time", "leave-one-out"], ids=["one-at-a-time", "leave-one-out"])
def test_broken_layer_ranks_first(mode):
    net, calib, score = _setup()
    report = sensitivity(net, qp.Recipe(), calib, score, mode=mode)
    assert report.names()[0] == "2"
    assert report.rows[0].harm > 10 * max(abs(r.harm) for r in report.rows[1:])
    assert sorted(report.names()) == ["0", "2", "4", "6"]
    assert report.float_metric == 0.0 and report.quantized_metric < 0


def test_calibration_runs_once(monkeypatch):
    net, calib, score = _setup()
    passes = []
    original = CalibrationStatistics.__init__

    def counting(self, *args, **kwargs):
        passes.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(CalibrationStatistics, "__init__", counting)
    sensitivity(net, qp.Recipe(), calib, score)
    assert len(passes) == 1


def test_top_k_limits_the_sweep_to_the_worst_layers_by_sqnr():
    net, calib, score = _setup()
    calls = []
    report = sensitivity(net, qp.Recipe(), calib, lambda m: calls.append(1) or score(m), top_k=1)
    assert report.names() == ["2"]
    assert len(calls) == 3  # FP32, all quantized, and the one layer


def test_lower_is_better_flips_the_sign(tmp_path):
    net, calib, score = _setup()
    report = sensitivity(net, qp.Recipe(), calib, lambda m: -score(m), lower_is_better=True, layers=["2", "4"])
    assert report.names()[0] == "2" and report.rows[0].harm > 0
    assert report.to_csv(tmp_path / "s.csv").read_text().splitlines()[1].startswith("1,2,")
    assert report.plot(tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments():
    net, calib, score = _setup()
    with pytest.raises(ValueError, match="mode"):
        sensitivity(net, qp.Recipe(), calib, score, mode="greedy")
    with pytest.raises(ValueError, match="not quantized"):
        sensitivity(net, qp.Recipe(), calib, score, layers=["1"])
    with pytest.raises(TypeError, match="number"):
        sensitivity(net, qp.Recipe(), calib, lambda m: "good")


def test_reference_metrics_save_two_evaluations():
    net, calib, score = _setup()
    calls = []
    report = sensitivity(
        net, qp.Recipe(), calib, lambda m: calls.append(1) or score(m), layers=["2"], reference_metrics=(0.0, -1.0)
    )
    assert len(calls) == 1 and report.quantized_metric == -1.0
