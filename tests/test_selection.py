import warnings

import pytest
import torch
import yaml

import quantpilot as qp
from quantpilot.nn.tensor_quantizer import CalibratorConfig
from quantpilot.selection import (
    CANDIDATE_CALIBRATORS,
    SMOOTHING_ALPHAS,
    _repair_calibrators,
    calibrator_label,
    choose_calibrators,
    smoothquant_alpha,
    with_functional_ops,
)
from quantpilot_testbed.digits_cnn import accuracy, digits_splits, train_digits_cnn
from quantpilot_testbed.resnet import ResNet


@pytest.fixture(scope="module")
def digits():
    """A digits CNN trained briefly on the real labels (held-out test split for the metric), BN folded."""
    splits = digits_splits(seed=0)
    model = qp.fold_batchnorm(train_digits_cnn(splits, epochs=4, width=8, seed=0))
    calib = [splits.train_x[i : i + 128] for i in range(0, 256, 128)]

    def eval_fn(m):
        return accuracy(m, splits.test_x, splits.test_y)

    return model, calib, eval_fn


def _naive_accuracy(model, recipe, calib, eval_fn):
    qmodel = qp.quantize(model, recipe)
    with qp.calibrate(qmodel):
        for x in calib:
            qmodel(x)
    return eval_fn(qp.freeze(qmodel))


# A deliberately poor naive recipe (per-tensor weights, min-max activations) so that the budget binds.
POOR = qp.Recipe(
    weights=qp.QuantSpec("int4", symmetric=True, granularity=qp.PerTensor()),
    activation_calibrator="minmax",
    name="poor",
)


def test_select_meets_the_budget_on_digits(digits):
    model, calib, eval_fn = digits
    float_acc = eval_fn(model)
    naive = _naive_accuracy(model, POOR, calib, eval_fn)
    assert naive < float_acc * 0.995  # the naive recipe misses: there is something to select
    recipe = qp.select(model, POOR, calib, eval_fn, budget=0.005, strategy="hybrid")
    assert recipe.notes["select"].startswith("met the budget")
    assert 0 < len(recipe.skip) < 5  # some layers float, not all
    # The recipe, applied the ordinary way, really meets the budget.
    assert _naive_accuracy(model, recipe, calib, eval_fn) >= float_acc * 0.995 - 1e-9
    for pattern in recipe.skip:
        assert recipe.notes[pattern.replace("[", "").replace("]", "")].startswith("left in float")


def test_selective_recipe_serialises_calibrator_choices(digits, tmp_path):
    model, calib, eval_fn = digits
    # A loose budget: no float layers needed, so the test checks the calibrator choices alone (and stays fast).
    recipe = qp.select(model, POOR, calib, eval_fn, budget=1.0)
    reloaded = qp.Recipe.from_yaml(recipe.to_yaml(tmp_path / "selected.yaml"))
    assert reloaded == recipe
    data = yaml.safe_load((tmp_path / "selected.yaml").read_text())
    chosen = {p: o["activation_calibrator"] for p, o in data["overrides"].items()}
    assert chosen, "minmax is rarely best everywhere: selective should have changed some calibrator"
    for pattern, calibrator in chosen.items():
        assert calibrator != {"kind": "minmax"}
        assert "least output MSE" in data["notes"][pattern]


def test_calibrator_choice_has_the_least_output_mse(digits):
    model, calib, _ = digits
    stats = qp.analysis.CalibrationStatistics(model, qp.Recipe(), calib, keep_inputs=True)
    choices = choose_calibrators(stats, qp.Recipe())
    assert set(choices) == {"stem.0", "block.body.0.0", "block.body.1", "conv.0", "head"}
    for best, errors in choices.values():
        assert len(errors) == 4
        assert errors[calibrator_label(best)] == min(errors.values())


def test_unreachable_budget_is_reported_with_the_gap():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    calls = iter(range(1000))

    def getting_worse(m):  # the float model scores 1.0, every quantized variant less
        return 1.0 if not qp.quantized_layers(m) else 0.5 - 0.001 * next(calls)

    with pytest.warns(UserWarning, match="MISSED the budget"):
        recipe = qp.select(net, qp.Recipe(), [torch.randn(8, 4)], getting_worse, budget=0.01)
    assert recipe.notes["select"].startswith("MISSED the budget by 0.49")


@pytest.mark.parametrize(
    "kwargs,error",
    [({"budget": -0.1}, ValueError), ({"strategy": "greedy"}, ValueError), ({"rank_by": "x"}, ValueError)],
    ids=["negative-budget", "unknown-strategy", "unknown-rank"],
)
def test_bad_arguments(kwargs, error):
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(error):
        qp.select(net, qp.Recipe(), [torch.randn(2, 2)], lambda m: 1.0, **kwargs)


def test_selective_quantizes_residual_adds_and_tunes_their_calibrators(tmp_path):
    torch.manual_seed(0)
    net = qp.fold_batchnorm(ResNet(in_channels=1, num_classes=4, widths=(4, 8), blocks_per_stage=1).eval())
    data = [torch.randn(16, 1, 8, 8)]
    with torch.no_grad():
        reference = net(data[0])

    def closeness(m):
        with torch.no_grad():
            return -float((m(data[0]) - reference).pow(2).mean())

    recipe = qp.select(net, qp.Recipe(activation_calibrator="minmax"), data, closeness, budget=1.0, relative=False)
    assert "add" in recipe.ops and recipe.notes["ops:add"].startswith("quantized")
    assert recipe.notes["ops:matmul"].startswith("not quantized")  # a CNN has no attention
    stats = qp.analysis.CalibrationStatistics(net, recipe.replace(overrides={}), data, keep_inputs=True)
    assert {"blocks.0:add", "blocks.1:add"} <= set(choose_calibrators(stats, recipe))
    assert qp.Recipe.from_yaml(recipe.to_yaml(tmp_path / "r.yaml")) == recipe
    # The add points are units of the sweep, ranked like layers.
    report = qp.analysis.sensitivity(
        net, recipe, data, closeness, mode="leave-one-out", layers=["blocks.0:add", "head"]
    )
    assert sorted(report.names()) == ["blocks.0:add", "head"]


def _spiky_net():
    """Layer "2" sees one input channel that is 0 or 10..30 (5 % of rows) beside channels in [0, 3]; the
    metric reads only the output that channel drives. A clipping calibrator (percentile 99) ruins it; any
    calibrator keeping the whole range repairs it in int8."""
    torch.manual_seed(0)

    def data(n):
        x = torch.randn(n, 16).clamp(-3, 3)
        x[:, 0] = torch.where(torch.rand(n) < 0.05, 1.5 + 0.5 * torch.rand(n), torch.zeros(n))
        return x

    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(16))
        net[0].weight[0, 0], net[0].bias[:] = 40.0, 0.0
        net[0].bias[0] = -50.0
        net[2].weight.zero_()
        net[2].weight[0, 0], net[2].weight[1, 1:], net[2].bias[:] = 1.0, 3.0, 0.0
        test = data(2048)
        reference = net(test)[:, 0]

    def score(m):  # higher is better: minus the mean absolute error of output 0
        with torch.no_grad():
            return -float((m(test)[:, 0] - reference).abs().mean())

    return net, [data(512)], score


CLIPPING = qp.Recipe(activation_calibrator={"kind": "histogram", "method": "percentile", "percentile": 99.0})


def test_selective_repairs_in_int8_where_hybrid_leaves_a_layer_float():
    net, calib, score = _spiky_net()
    hybrid = qp.select(net, CLIPPING, calib, score, budget=0.02, relative=False, strategy="hybrid")
    selective = qp.select(net, CLIPPING, calib, score, budget=0.02, relative=False)
    assert hybrid.skip == ("2",)  # the clipped layer is the one that hurts
    assert selective.skip == () and selective.notes["select"].startswith("met the budget")
    assert selective.overrides["2"]["activation_calibrator"] != CLIPPING.activation_calibrator
    stats = qp.analysis.CalibrationStatistics(net, CLIPPING, calib)
    assert -score(stats.build(selective)) <= 0.02 < -score(stats.build(CLIPPING))


def test_calibrator_repair_goes_by_the_task_metric_most_harmful_first_and_stops_at_the_budget():
    mse = CalibratorConfig("histogram", {"method": "mse"})
    good = {"a": CalibratorConfig("minmax"), "b": CalibratorConfig("histogram", {"method": "entropy"})}
    calls = []

    def measure(recipe):  # one point lost per unit without its good calibrator ("c" has none)
        calls.append(recipe)
        chosen = {u: recipe.overrides.get(u, {}).get("activation_calibrator") for u in ("a", "b")}
        return -float(sum(chosen[u] != good[u] for u in good)) - 1.0

    harm = {"a": 0.5, "b": 0.3, "c": 0.0}
    tunable = {"a": mse, "b": mse, "c": mse}
    args = (["a", "b", "c"], harm, tunable, CANDIDATE_CALIBRATORS, measure, lambda m: -m)
    recipe, metric, repairs = _repair_calibrators(qp.Recipe(), -3.0, *args, allowed=1.0)
    assert metric == -1.0 and len(calls) == 6  # three other candidates for "a", three for "b", none for "c"
    assert {u: recipe.overrides[u]["activation_calibrator"] for u in good} == good
    assert repairs["a"][0] == good["a"] and "best task metric" in repairs["a"][1]
    calls.clear()
    _, metric, repairs = _repair_calibrators(qp.Recipe(), -3.0, *args, allowed=2.0)
    assert metric == -2.0 and len(calls) == 3 and "b" not in repairs  # within budget after "a": stops


def test_select_reuses_given_statistics_and_refuses_mismatched_ones():
    net, calib, score = _spiky_net()
    quantized, _ = with_functional_ops(net, CLIPPING)
    stats = qp.analysis.CalibrationStatistics(net, quantized, calib, keep_inputs=True)
    kwargs = {"budget": 0.02, "relative": False}
    reused = qp.select(net, CLIPPING, calib, score, statistics=stats, **kwargs)
    assert reused == qp.select(net, CLIPPING, calib, score, **kwargs)
    assert -score(stats.build(reused)) <= 0.02  # the final model comes from the same statistics
    with pytest.raises(ValueError, match="keep_inputs"):
        qp.select(net, CLIPPING, calib, score, statistics=qp.analysis.CalibrationStatistics(net, quantized, calib))
    other = qp.analysis.CalibrationStatistics(net, quantized.replace(activation_calibrator="minmax"), calib)
    with pytest.raises(ValueError, match="another recipe"):
        qp.select(net, CLIPPING, calib, score, strategy="hybrid", statistics=other)
    with pytest.raises(TypeError, match="CalibrationStatistics"):
        qp.select(net, CLIPPING, calib, score, statistics={"not": "statistics"})


def test_selective_smooths_outlier_channels_instead_of_leaving_layers_float(tmp_path):
    torch.manual_seed(0)
    scales = torch.ones(32)
    scales[:2] = 60.0  # two outlier input channels, as a transformer's LayerNorm outputs have
    net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    calib = [torch.randn(128, 32) * scales for _ in range(2)]
    test = torch.randn(512, 32) * scales
    with torch.no_grad():
        reference = net(test)

    def score(m):  # minus the relative output MSE against FP32
        with torch.no_grad():
            return -float((m(test) - reference).pow(2).mean() / reference.pow(2).mean())

    kwargs = {"budget": 1.3e-3, "relative": False}
    assert qp.select(net, qp.Recipe(), calib, score, strategy="hybrid", **kwargs).skip != ()
    recipe = qp.select(net, qp.Recipe(), calib, score, **kwargs)
    assert recipe.skip == () and recipe.notes["select"].startswith("met the budget")
    alpha = smoothquant_alpha(recipe)
    # The choice is a step of the recipe, not prose: saved to YAML and fed to quantize/calibrate/freeze it smooths.
    assert alpha in SMOOTHING_ALPHAS and recipe.steps == (qp.steps.SmoothQuant(alpha=alpha),)
    built = qp.selection.build(net, recipe, calib)
    assert -score(built) <= 1.3e-3
    reloaded = qp.Recipe.from_yaml(recipe.to_yaml(tmp_path / "selected.yaml"))
    plain = qp.quantize(net, reloaded)
    with qp.calibrate(plain):
        for batch in calib:
            plain(batch)
    x = calib[0][:8]
    torch.testing.assert_close(qp.freeze(plain)(x), built(x), rtol=0, atol=0)
    torch.testing.assert_close(built(x), qp.algorithms.smoothquant(net, calib, alpha=alpha, recipe=recipe)(x))
    unsmoothed_recipe = recipe.replace(steps=())
    assert -score(qp.analysis.CalibrationStatistics(net, unsmoothed_recipe, calib).build(unsmoothed_recipe)) > 1.3e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without smoothing the search may miss: that is not the point here
        unsmoothed = qp.select(net, qp.Recipe(), calib, score, smoothing=(), **kwargs)
    assert smoothquant_alpha(unsmoothed) is None and "smoothquant" not in unsmoothed.notes
    with pytest.raises(ValueError, match="alphas"):
        qp.select(net, qp.Recipe(), calib, score, smoothing=(1.5,))


def test_build_without_smoothing_is_quantize_calibrate_freeze():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    calib = [torch.randn(32, 16) for _ in range(2)]
    recipe = qp.Recipe(skip=("2",))
    built = qp.selection.build(net, recipe, calib)
    expected = qp.quantize(net, recipe)
    with qp.calibrate(expected):
        for batch in calib:
            expected(batch)
    qp.freeze(expected)
    assert qp.is_frozen(built) and type(built[2]) is torch.nn.Linear
    assert torch.equal(built(calib[0]), expected(calib[0]))
    with pytest.raises(TypeError, match="Recipe"):
        qp.selection.build(net, "int8-static", calib)
    with pytest.raises(ValueError, match="empty"):
        qp.selection.build(net, recipe, [])
