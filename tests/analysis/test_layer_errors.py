import math

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.analysis import layer_errors
from quantpilot.metrics import sqnr_db


def _calibrated(net, data, recipe="int8-static"):
    qmodel = qp.quantize(net, recipe)
    with qp.calibrate(qmodel):
        for x in data:
            qmodel(x)
    return qmodel


def _net_with_outlier() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        # An outlier weight on an input that is always 0: the float output is unchanged, but per-channel
        # int8 rounds every other weight of row 0 to zero.
        net[0].weight[3].zero_()
        net[0].bias[3] = -1.0
        net[2].weight[0, 3] = 200.0
    return net


def test_weight_sqnr_matches_a_direct_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4)).eval()
    data = [torch.randn(32, 8)]
    report = layer_errors(_calibrated(net, data), data)
    frozen = qp.freeze(_calibrated(net, data))
    direct = sqnr_db(net[0].weight, frozen[0].quantized_weight(torch.float32))
    assert report.rows[0].weight_sqnr_db == pytest.approx(direct, abs=1e-9)
    # The output can only be as clean as its noisier factor allows.
    assert report.rows[0].output_sqnr_db < report.rows[0].weight_sqnr_db + 3


def test_broken_layer_is_worst_and_frozen_needs_float_model():
    net = _net_with_outlier()
    data = [torch.randn(64, 16)]
    qmodel = _calibrated(net, data)
    report = layer_errors(qmodel, data)
    assert report.worst(1)[0].name == "2"
    assert [r.name for r in report.rows] == ["0", "2", "4"]
    assert qmodel[0].input_quantizer.scale is None  # the caller's model was not frozen
    frozen = qp.freeze(qmodel)
    with pytest.warns(UserWarning, match="float_model"):
        blind = layer_errors(frozen, data)
    assert math.isnan(blind.rows[0].weight_sqnr_db) and not math.isnan(blind.rows[0].activation_sqnr_db)
    seen = layer_errors(frozen, data, float_model=net)
    assert seen.rows[1].output_sqnr_db == pytest.approx(report.rows[1].output_sqnr_db, rel=1e-9)


def test_weight_only_recipe_has_exact_activations(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8)).eval()
    data = [torch.randn(4, 8)]
    report = layer_errors(qp.quantize(net, "w8a16"), data)
    assert report.rows[0].activation_sqnr_db == math.inf
    path = report.to_csv(tmp_path / "errors.csv")
    assert path.read_text().startswith("name,type,weight_sqnr_db")
    with pytest.raises(ValueError, match="already exists"):
        report.to_csv(path)


def test_bad_inputs():
    with pytest.raises(ValueError, match="not quantized"):
        layer_errors(nn.Linear(2, 2), [torch.randn(1, 2)])
    with pytest.raises(ValueError, match="calibrat"):
        layer_errors(qp.quantize(nn.Sequential(nn.Linear(2, 2))), [torch.randn(1, 2)])
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="empty"):
        layer_errors(_calibrated(net, [torch.randn(3, 2)]), [])


def test_residual_add_points_get_rows_named_by_point():
    from quantpilot_testbed.resnet import ResNet

    torch.manual_seed(0)
    net = qp.fold_batchnorm(ResNet(in_channels=1, widths=(4,), blocks_per_stage=2).eval())
    data = [torch.randn(8, 1, 8, 8)]
    report = layer_errors(_calibrated(net, data, qp.Recipe(ops=("add",))), data)
    rows = {r.name: r for r in report.rows}
    assert {"blocks.0:add", "blocks.1:add"} <= set(rows)
    assert 20 < rows["blocks.0:add"].activation_sqnr_db < math.inf and rows["blocks.0:add"].type == "add"


def test_gpt2_conv1d_layers_are_compared_with_their_transposed_float_weight():
    """transformers' Conv1D stores W as (in, out); square ones (c_proj) would otherwise compare silently wrong."""
    from quantpilot.testing import tiny_causal_lm

    model = tiny_causal_lm("gpt2")
    qmodel = qp.quantize(model, "w8a16")
    qp.freeze(qmodel)
    report = layer_errors(qmodel, [torch.randint(0, 512, (2, 16))], float_model=model)
    proj = next(r for r in report.rows if r.name == "transformer.h.0.attn.c_proj")
    conv1d = model.get_submodule("transformer.h.0.attn.c_proj")
    expected = sqnr_db(conv1d.weight.detach().t(), qmodel.get_submodule(proj.name).quantized_weight(torch.float32))
    assert proj.weight_sqnr_db == pytest.approx(expected, abs=0.05)
    assert all(r.weight_sqnr_db > 30 for r in report.rows if r.type == "QuantLinear")
