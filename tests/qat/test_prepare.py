"""qat.prepare: STE and LSQ gradients, what it refuses, and freeze / save after QAT."""

import copy

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.qat import LearnedScaleQuantizer, lsq_grad_factor


def _calibrated(recipe="int8-static", seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    qmodel = qp.quantize(model, recipe)
    with qp.calibrate(qmodel):
        qmodel(torch.randn(64, 4))
    return qmodel


def test_ste_passes_gradients_inside_the_range_and_blocks_them_outside():
    qat = qp.qat.prepare(_calibrated())
    q = qat[0].input_quantizer
    lo = (q.spec.qmin - q.zero_point) * q.scale
    hi = (q.spec.qmax - q.zero_point) * q.scale
    x = torch.stack([lo * 0.5, hi * 0.5, lo - 1.0, hi + 1.0]).reshape(1, 4).detach().requires_grad_(True)
    q(x).sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0, 0.0, 0.0]]
    # Weights get the same straight-through gradient (min/max range: every weight is inside).
    layer = qat[0]
    layer.quantized_weight(torch.float32).sum().backward()
    assert torch.equal(layer.weight.grad, torch.ones_like(layer.weight))


def test_without_learn_ranges_scales_stay_fixed_buffers():
    qat = qp.qat.prepare(_calibrated())
    names = {n for n, _ in qat.named_parameters()}
    assert names == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert qat.training and qp.is_frozen(qat) is False


def test_learned_scales_receive_lsq_gradients():
    qat = qp.qat.prepare(_calibrated(), learn_ranges=True)
    layer = qat[0]
    assert isinstance(layer.input_quantizer, LearnedScaleQuantizer)
    act_scale, w_scale = layer.input_quantizer.scale, layer.weight_scale
    assert isinstance(act_scale, nn.Parameter) and isinstance(w_scale, nn.Parameter) and w_scale.shape == (8,)
    # Initialised from calibration: the PTQ model's outputs are unchanged.
    frozen_ptq = qp.freeze(_calibrated())
    x = torch.randn(16, 4)
    assert torch.equal(qat(x), frozen_ptq(x))
    qat(3 * x).pow(2).sum().backward()
    assert act_scale.grad is not None and act_scale.grad.abs().item() > 0
    assert w_scale.grad is not None and bool((w_scale.grad != 0).any())
    # The weight scale's gradient carries LSQ's factor 1 / sqrt(weights per scale * qmax).
    assert layer.weight_scale_grad_factor == pytest.approx(lsq_grad_factor(4, 127))


def test_lsq_factor_scales_the_activation_gradient():
    qat = qp.qat.prepare(_calibrated(), learn_ranges=True)
    q = qat[0].input_quantizer
    x = 5 * torch.randn(2, 4)
    q(x).sum().backward()
    learned = q.scale.grad.clone()
    plain = q.scale.detach().clone().requires_grad_(True)
    qp.primitives.fake_quantize(x, plain, q.zero_point, q.spec).sum().backward()
    assert learned.item() == pytest.approx(plain.grad.item() * lsq_grad_factor(4, 127))


def test_prepare_copies_unless_inplace():
    qmodel = _calibrated()
    before = copy.deepcopy(qmodel.state_dict())
    qat = qp.qat.prepare(qmodel, learn_ranges=True)
    assert qat is not qmodel and qmodel[0].input_quantizer.scale is None
    assert all(torch.equal(before[k], v) for k, v in qmodel.state_dict().items())
    assert qp.qat.prepare(qmodel, inplace=True) is qmodel and qmodel[0].input_quantizer.scale is not None


def test_freeze_after_qat_uses_the_learned_scales():
    qat = qp.qat.prepare(_calibrated(), learn_ranges=True)
    with torch.no_grad():
        qat[0].input_quantizer.scale.mul_(1.5)
        qat[0].weight_scale.mul_(2.0)
    learned_act = qat[0].input_quantizer.scale.detach().clone()
    learned_w = qat[0].weight_scale.detach().clone()
    x = torch.randn(8, 4)
    qat.eval()
    expected = qat(x).detach()
    qp.freeze(qat)
    assert qp.is_frozen(qat)
    assert torch.equal(qat[0].input_quantizer.scale, learned_act) and torch.equal(qat[0].weight_scale, learned_w)
    # A frozen model holds plain buffers, exactly as after PTQ, and computes what the QAT model did.
    assert not any("scale" in n for n, _ in qat.named_parameters())
    assert torch.equal(qat(x), expected)


def test_save_and_load_after_qat(tmp_path):
    qat = qp.qat.prepare(_calibrated(), learn_ranges=True)
    with torch.no_grad():
        qat[2].input_quantizer.scale.mul_(0.8)
    qp.freeze(qat.eval())
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    loaded = qp.load(fresh, qp.save(qat, tmp_path / "qat"))
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), qat(x))


def test_weight_only_recipes_need_no_calibration():
    qmodel = qp.quantize(nn.Sequential(nn.Linear(4, 4)), "w8a16")
    qat = qp.qat.prepare(qmodel, learn_ranges=True)
    assert isinstance(qat[0].weight_scale, nn.Parameter)


def test_uncalibrated_frozen_or_float_models_are_rejected():
    with pytest.raises(ValueError, match="never calibrated"):
        qp.qat.prepare(qp.quantize(nn.Sequential(nn.Linear(4, 4))))
    with pytest.raises(ValueError, match="frozen"):
        qp.qat.prepare(qp.freeze(_calibrated()))
    with pytest.raises(ValueError, match="not quantized"):
        qp.qat.prepare(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(TypeError, match="nn.Module"):
        qp.qat.prepare("model")
    with pytest.raises(TypeError, match="learn_ranges"):
        qp.qat.prepare(_calibrated(), learn_ranges="yes")


def _int4_per_channel_layer(seed=0):
    from quantpilot.nn import QuantLinear

    torch.manual_seed(seed)
    spec = qp.QuantSpec("int4", symmetric=True, narrow_range=True, granularity=qp.PerChannel(0))
    return QuantLinear.from_float(nn.Linear(64, 16), weight_spec=spec)


def _squared_error_per_channel(layer, scale, zero_point):
    from quantpilot.primitives import fake_quantize

    w = layer.weight.detach()
    return ((fake_quantize(w, scale, zero_point, layer.weight_spec) - w) ** 2).sum(dim=1)


def test_mse_weight_init_lowers_every_channels_error_at_4_bits():
    from quantpilot.qat.learned_scale import mse_weight_qparams

    layer = _int4_per_channel_layer()
    minmax = layer.weight_qparams()
    mse = mse_weight_qparams(layer)
    err_minmax, err_mse = _squared_error_per_channel(layer, *minmax), _squared_error_per_channel(layer, *mse)
    assert bool((err_mse <= err_minmax).all())
    # Uniform-initialised weights at 4 bits: shrinking the range pays off in total.
    assert err_mse.sum() < 0.9 * err_minmax.sum()
    assert bool((mse[0] <= minmax[0]).all()) and bool((mse[0] >= 0.3 * minmax[0] - 1e-9).all())


def test_mse_weight_init_also_works_per_group_and_asymmetric():
    from quantpilot.nn import QuantLinear
    from quantpilot.qat.learned_scale import mse_weight_qparams

    torch.manual_seed(1)
    spec = qp.QuantSpec("int4", symmetric=False, granularity=qp.PerGroup(16))
    layer = QuantLinear.from_float(nn.Linear(64, 4), weight_spec=spec)
    scale, zero_point = mse_weight_qparams(layer)
    ref_scale, ref_zero_point = layer.weight_qparams()
    assert scale.shape == ref_scale.shape and zero_point.shape == ref_zero_point.shape


def test_prepare_with_mse_weight_init_starts_from_the_smaller_error_scales():
    from quantpilot.qat.learned_scale import mse_weight_qparams

    torch.manual_seed(0)
    int4 = qp.QuantSpec("int4", symmetric=True, narrow_range=True, granularity=qp.PerChannel(0))
    qmodel = qp.quantize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), qp.Recipe(weights=int4))
    with qp.calibrate(qmodel):
        qmodel(torch.randn(64, 4))
    expected = mse_weight_qparams(qmodel[2])[0]
    qat = qp.qat.prepare(qmodel, learn_ranges=True, weight_init="mse")
    assert isinstance(qat[2].weight_scale, nn.Parameter) and torch.equal(qat[2].weight_scale.detach(), expected)
    assert not isinstance(qmodel[2]._parameters.get("weight_scale"), nn.Parameter)  # the user's model is untouched


def test_weight_init_errors_say_what_to_change():
    with pytest.raises(ValueError, match="learn_ranges=True"):
        qp.qat.prepare(_calibrated(), weight_init="mse")
    with pytest.raises(ValueError, match="calibrator, mse"):
        qp.qat.prepare(_calibrated(), learn_ranges=True, weight_init="percentile")
