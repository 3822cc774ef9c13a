import pytest
import torch
import yaml

import quantpilot as qp
from quantpilot.models.digits_cnn import accuracy, digits_splits, train_digits_cnn
from quantpilot.models.resnet import ResNet
from quantpilot.selection import calibrator_label, choose_calibrators


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
