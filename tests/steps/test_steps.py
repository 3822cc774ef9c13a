"""Methods as recipe steps: serialised, validated, and rebuilding bit for bit what the one-shot wrappers return."""

import sys

import pytest
import torch

import quantpilot as qp
from quantpilot.testing import tiny_causal_lm


def lm_batches(n=4, seq=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 512, (1, seq), generator=g)} for _ in range(n)]


def rebuild(model, recipe, batches, tmp_path):
    """quantize / calibrate / freeze with the recipe after a YAML round trip."""
    recipe = qp.Recipe.from_yaml(recipe.to_yaml(tmp_path / "recipe.yaml"))
    qmodel = qp.quantize(model, recipe)
    with qp.calibrate(qmodel):
        for batch in batches:
            qmodel(**batch) if isinstance(batch, dict) else qmodel(batch)
    return qp.freeze(qmodel)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


METHODS = {
    "gptq": lambda m, d: qp.algorithms.gptq(m, d, bits=4, group_size=64),
    "gptq-act-order": lambda m, d: qp.algorithms.gptq(m, d, bits=4, group_size=64, act_order=True, damp=0.02),
    "awq": lambda m, d: qp.algorithms.awq(m, d, bits=4, group_size=64, search_tokens=128),
    "rtn": lambda m, d: qp.algorithms.rtn(m, bits=4, group_size=64),
    "rtn+embeddings": lambda m, d: qp.algorithms.quantize_embeddings(qp.algorithms.rtn(m, bits=4, group_size=64)),
    "llm-int8": lambda m, d: qp.algorithms.llm_int8(m, threshold=3.0),
    "smoothquant": lambda m, d: qp.algorithms.smoothquant(m, d, alpha=0.6, activations="dynamic"),
}


@pytest.mark.filterwarnings("ignore:nothing to calibrate")
@pytest.mark.parametrize("method", list(METHODS), ids=list(METHODS))
def test_recipe_of_a_method_rebuilds_it_bit_for_bit(method, tmp_path):
    model, data = tiny_causal_lm("llama"), lm_batches(n=4, seq=64)
    expected = METHODS[method](model, data)
    recipe = qp.recipe_of(expected)
    rebuilt = rebuild(model, recipe, data, tmp_path)
    assert_same_state(expected, rebuilt)
    ids = data[0]["input_ids"]
    assert torch.equal(expected(input_ids=ids).logits, rebuilt(input_ids=ids).logits)
    # ... and save/load keep both the steps and the values.
    loaded = qp.load(tiny_causal_lm("llama", seed=1), qp.save(rebuilt, tmp_path / "saved"))
    assert qp.recipe_of(loaded) == recipe
    assert torch.equal(loaded(input_ids=ids).logits, expected(input_ids=ids).logits)


def test_smoothquant_step_is_in_the_recipe_and_survives_yaml(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    calib = [torch.randn(64, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    expected = qp.algorithms.smoothquant(net, calib, alpha=0.7)
    recipe = qp.recipe_of(expected)
    assert recipe.steps == (qp.steps.SmoothQuant(alpha=0.7),)
    rebuilt = rebuild(net, recipe, calib, tmp_path)
    assert_same_state(expected, rebuilt)
    assert sorted(expected.quantpilot_smoothing) == ["0", "2"]


def test_quantize_defers_data_steps_until_freeze():
    net = torch.nn.Sequential(torch.nn.Linear(8, 8))
    qmodel = qp.quantize(net, qp.Recipe(steps=(qp.steps.SmoothQuant(),)))
    assert qp.quantized_layers(qmodel) == []  # float until freeze: the step sees the float model
    with pytest.raises(ValueError, match="run on calibration data"):
        qp.freeze(qmodel)
    with pytest.raises(ValueError, match="already quantized"):
        qp.quantize(qmodel, "int8-static")


@pytest.mark.parametrize(
    "steps,match",
    [
        ([{"name": "nope"}], "unknown recipe step 'nope'"),
        ([{"name": "gptq", "dampening": 0.1}], "unknown fields \\['dampening'\\]"),
        ([{"name": "gptq", "damp": 2}], "damp is a fraction"),
        ([{"name": "smoothquant", "alpha": 1.5}], "alpha must be"),
        ([{"alpha": 0.5}], "a mapping with a 'name'"),
    ],
    ids=["unknown-step", "unknown-field", "bad-damp", "bad-alpha", "no-name"],
)
def test_bad_steps_are_one_line_errors(steps, match):
    with pytest.raises(ValueError, match=match):
        qp.Recipe.from_dict({"steps": steps})


@pytest.mark.parametrize(
    "recipe,step,match",
    [
        ("int8-static", qp.steps.GPTQ(act_order=True), "act_order and blocks are for weight-only"),
        ("int8-static", (qp.steps.GPTQ(), qp.steps.SmoothQuant()), "SmoothQuant before GPTQ"),
        (
            qp.Recipe.preset("w4a16-g128").replace(activations=qp.Recipe().activations),
            qp.steps.GPTQ(),
            "per-channel or per-tensor",
        ),
        ("int8-static", qp.steps.AWQ(), "quantizes weights only"),
        ("w8a16", qp.steps.SmoothQuant(), "activation scheme"),
    ],
    ids=[
        "gptq-w8a8-act-order",
        "smoothquant-after-gptq",
        "gptq-grouped-w4a8",
        "awq-on-w8a8",
        "smoothquant-weight-only",
    ],
)
def test_steps_check_the_recipe_they_join(recipe, step, match):
    base = qp.Recipe.preset(recipe) if isinstance(recipe, str) else recipe
    with pytest.raises(ValueError, match=match):
        base.replace(steps=step if isinstance(step, tuple) else (step,))


def test_version_1_recipes_still_load():
    data = qp.Recipe.preset("int8-static").to_dict()
    for key in ("steps", "layers", "scale_dtype"):
        data.pop(key)
    data["format_version"] = 1
    assert qp.Recipe.from_dict(data) == qp.Recipe.preset("int8-static")
    with pytest.raises(ValueError, match="upgrade quantpilot"):
        qp.Recipe.from_dict({**data, "format_version": 9})


def test_fold_batchnorm_step_runs_inside_quantize():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
    qmodel = qp.quantize(net, qp.Recipe(activations=None, steps=("fold_batchnorm",)))
    assert type(qmodel[1]).__name__ == "Identity" and type(net[1]).__name__ == "BatchNorm2d"


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"], ids=["rtn", "gptq", "awq"])
def test_methods_leave_the_float_model_untouched_and_share_nothing_it_keeps(method):
    model, data = tiny_causal_lm("llama"), lm_batches(n=4, seq=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel = METHODS[method](model, data)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # What the quantized model keeps in float (norms, the head) is its own copy, not the user's tensors.
    float_ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert not float_ptrs & {t.data_ptr() for t in qmodel.state_dict().values()}


def test_a_group_size_that_does_not_divide_a_layer_is_refused_before_anything_changes():
    net = torch.nn.Sequential(torch.nn.Linear(128, 100), torch.nn.Linear(100, 8))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"does not divide .*'1' \(Linear, 100\)"):
        qp.quantize(net, "w4a16-g128", inplace=True)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net(torch.randn(1, 128)).shape == (1, 8)  # still the float model, untouched


def test_a_method_that_fails_part_way_in_place_leaves_a_model_that_says_so(monkeypatch):
    model = tiny_causal_lm("llama")
    data = lm_batches(n=4, seq=64)

    def boom(*_args, **_kwargs):
        raise KeyboardInterrupt

    ids = data[0]["input_ids"]
    # Interrupted inside GPTQ's block loop (the first quantized weight), in place.
    monkeypatch.setattr(sys.modules["quantpilot.algorithms.gptq"], "gptq_quantize_weight", boom)
    with pytest.raises(KeyboardInterrupt):
        qp.algorithms.gptq(model, data, bits=4, group_size=64, inplace=True)
    with pytest.raises(ValueError, match="stopped part-way"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="stopped part-way"):
        qp.quantize(model, "int8-dynamic")
