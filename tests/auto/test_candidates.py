"""Candidates: the families a model and target allow, and builds from cached ranges equal to the statistics' own."""

import pytest
import torch

from quantpilot.auto.candidates import Builder, Candidate, families, relative_error

from .test_autoquantize import CALIB, _mlp


@pytest.mark.parametrize("alpha", [None, 0.5], ids=["plain", "smoothquant"])
def test_builds_replaying_cached_ranges_equal_the_statistics_build_bit_for_bit(alpha):
    net = _mlp()
    builder = Builder(net, CALIB)
    family = next(f for f in families(net, "torch")[0] if f.name == "static")
    variants = [Candidate("head", "quantized", "static", family.recipe), *builder.calibrator_variants(family)[1:3]]
    for c in variants:
        c = Candidate(c.name, c.kind, c.family, c.recipe, alpha=alpha)
        for _ in range(2):  # the second build replays the cached ranges
            assert torch.equal(builder.build(c)(CALIB[0]), builder.statistics(alpha).build(c.recipe)(CALIB[0])), c.name
    assert builder.calibration_passes == (1 if alpha is None else 2)  # one pass per SmoothQuant alpha


@pytest.mark.parametrize(
    "target,expected",
    [("torch-int8", ["dynamic", "static"]), ("openvino", ["static"]), ("onnxruntime", ["static"])],
    ids=["torch-int8", "openvino", "onnxruntime"],
)
def test_dynamic_int8_only_where_the_engine_can_run_it(target, expected):
    found, skipped = families(_mlp(), target)
    assert [f.name for f in found] == expected
    assert {name for name, _ in skipped} >= {"static+ops", "weight-only"}


def test_a_model_with_batchnorm_folds_it_in_every_recipe():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    found, _ = families(net, "openvino")
    assert all(any(type(s).__name__ == "FoldBatchNorm" for s in f.recipe.steps) for f in found)


def test_relative_error_is_zero_for_equal_outputs_and_scale_free():
    a = [torch.randn(4, 8)]
    assert relative_error(a, a) == 0.0
    assert relative_error(a, [a[0] * 1.1]) == pytest.approx(relative_error([a[0] * 7], [a[0] * 7.7]))
