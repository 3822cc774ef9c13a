"""Recipes: presets, layer resolution (skips, overrides), validation and the YAML/JSON round trip."""

import pytest

from quantpilot import PerChannel, PerGroup, PerTensor, PerToken, QuantSpec, Recipe
from quantpilot.nn import CalibratorConfig


@pytest.mark.parametrize("name", Recipe.presets(), ids=Recipe.presets())
def test_presets_round_trip_through_yaml_and_json(name, tmp_path):
    recipe = Recipe.preset(name)
    assert recipe.name == name
    assert Recipe.from_yaml(recipe.to_yaml(tmp_path / "r.yaml")) == recipe
    assert Recipe.from_json(recipe.to_json(tmp_path / "r.json")) == recipe


def test_overrides_and_skips_round_trip(tmp_path):
    recipe = Recipe(
        skip=("pooler.*", "classifier"),
        overrides={
            "encoder.layer.5.*": {"activations": QuantSpec("uint8", symmetric=False)},
            "*.output.dense": {"activation_calibrator": {"kind": "histogram", "method": "mse"}},
        },
    )
    loaded = Recipe.from_yaml(recipe.to_yaml(tmp_path / "r.yaml"))
    assert loaded == recipe
    assert loaded.overrides["*.output.dense"]["activation_calibrator"] == CalibratorConfig(
        "histogram", {"method": "mse"}
    )


def test_layer_resolution_applies_matching_overrides_in_order():
    recipe = Recipe(
        overrides={
            "encoder.*": {"activations": None},
            "encoder.layer.1.*": {"activations": "dynamic"},
        },
        skip=("head",),
    )
    assert recipe.for_layer("head", "Linear") is None
    assert recipe.for_layer("embed", "Conv2d").activations == Recipe().activations
    assert recipe.for_layer("encoder.layer.0.fc", "Linear").activations is None
    late = recipe.for_layer("encoder.layer.1.fc", "Linear")
    assert late.dynamic and isinstance(late.activations.granularity, PerToken)
    assert Recipe(module_types=("Conv2d",)).for_layer("fc", "Linear") is None


def test_dynamic_forms_normalise():
    assert Recipe(activations="dynamic").dynamic
    assert Recipe(activations=QuantSpec(granularity=PerToken())).dynamic
    assert not Recipe(activations=None).dynamic
    assert Recipe(activations=QuantSpec(), dynamic=True).activations.granularity == PerTensor()


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"activations": "static"}, ValueError, "dynamic"),
        ({"module_types": ("Linear", "LSTM")}, ValueError, "unknown module_types"),
        ({"weights": QuantSpec(granularity=PerToken())}, ValueError, "weights are static"),
        ({"activations": QuantSpec(granularity=PerGroup(32))}, ValueError, "dynamic=True"),
        ({"overrides": {"x": {"bits": 4}}}, ValueError, "unknown keys"),
        ({"overrides": {"x": "int8"}}, TypeError, "mapping"),
        ({"skip": "classifier"}, TypeError, "list of strings"),
        ({"weights": "int8"}, TypeError, "QuantSpec"),
        ({"activation_calibrator": {"kind": "kl"}}, ValueError, "kl"),
        ({"activation_calibrator": {"kind": "histogram", "bogus": 1}}, ValueError, "bogus"),
    ],
    ids=[
        "bad-activations-string",
        "unknown-type",
        "per-token-weights",
        "static-per-group-activations",
        "unknown-override-key",
        "override-not-mapping",
        "skip-as-string",
        "weights-as-string",
        "unknown-calibrator",
        "unknown-calibrator-option",
    ],
)
def test_bad_recipes_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        Recipe(**kwargs)


def test_from_dict_rejects_unknown_keys_and_versions():
    with pytest.raises(ValueError, match="unknown recipe keys"):
        Recipe.from_dict({"weigths": None})
    with pytest.raises(ValueError, match="format_version"):
        Recipe.from_dict({"format_version": 99})
    with pytest.raises(ValueError, match="unknown preset"):
        Recipe.preset("int3")


def test_writing_never_overwrites(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("mine")
    with pytest.raises(ValueError, match="already exists"):
        Recipe().to_yaml(path)
    assert path.read_text() == "mine"


def test_default_recipe_is_the_field_default():
    r = Recipe.preset("int8-static")
    assert r.weights == QuantSpec("int8", symmetric=True, narrow_range=True, granularity=PerChannel(0))
    assert r.activations == QuantSpec("int8", symmetric=False, granularity=PerTensor())
    assert r.activation_calibrator == CalibratorConfig("histogram", {"method": "mse"})
