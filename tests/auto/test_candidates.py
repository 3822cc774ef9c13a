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


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"], ids=["openvino", "onnxruntime"])
def test_a_cnn_also_gets_the_uint8_and_symmetric_activation_placements_on_qdq_engines(target):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    found = {f.name: f for f in families(net, target)[0]}
    sym, u8 = found["static-sym"].recipe, found["static-u8"].recipe
    assert sym.activations.symmetric and not found["static"].recipe.activations.symmetric
    assert u8.activations.dtype.value == "uint8" and not u8.activations.symmetric
    for name in ("static-sym", "static-u8"):
        assert name not in {f.name for f in families(_mlp(), target)[0]}  # no convolution: not offered
        assert name not in {f.name for f in families(net, "torch")[0]}  # not a QDQ engine


def test_a_cnn_candidate_of_the_symmetric_family_builds_from_the_shared_statistics():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    family = {f.name: f for f in families(net, "openvino")[0]}["static-sym"]
    builder = Builder(net, [torch.randn(2, 3, 8, 8) for _ in range(2)])
    qmodel = builder.build(Candidate("static-sym", "quantized", "static-sym", family.recipe))
    assert builder.calibration_passes == 1
    assert builder.proxy(qmodel) < 0.05


def test_relative_error_is_zero_for_equal_outputs_and_scale_free():
    a = [torch.randn(4, 8, generator=torch.Generator().manual_seed(0))]
    assert relative_error(a, a) == 0.0
    assert relative_error(a, [a[0] * 1.1]) == pytest.approx(relative_error([a[0] * 7], [a[0] * 7.7]), rel=1e-5)


def test_relative_error_leaves_padding_rows_out_and_weighs_rows_alike():
    ref = torch.ones(1, 3, 4)
    ref[0, 0] *= 100  # one large row (a special token) must not drown the others
    out = ref.clone()
    out[0, 1] *= 1.1  # a real token off by 10 %
    out[0, 2] = 1e3  # a padding position, whatever its value
    mask = torch.tensor([[1, 1, 0]])
    assert relative_error([ref], [out], [mask]) == pytest.approx(0.01 / 2)
    assert relative_error([ref], [out]) > 1e3  # unmasked, the padding row dominates


class _Tokens(torch.nn.Module):
    """A stand-in sequence model: hidden states (batch, tokens, width) from token ids."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.proj = torch.nn.Embedding(16, 8), torch.nn.Linear(8, 8)

    def forward(self, input_ids, attention_mask):
        return self.proj(self.embed(input_ids))


def test_the_proxy_reads_the_batches_attention_mask():
    batch = {"input_ids": torch.randint(0, 16, (2, 6)), "attention_mask": torch.tensor([[1] * 6, [1] * 3 + [0] * 3])}
    builder = Builder(_Tokens().eval(), [batch])
    assert builder.masks[0] is batch["attention_mask"]
    assert builder.proxy(builder.model) == 0.0


def test_smoothquant_variants_offer_min_max_ranges_at_every_alpha():
    from quantpilot.auto.candidates import SMOOTHING_ALPHAS

    family = {f.name: f for f in families(_Tokens(), "openvino")[0]}["static"]
    variants = Builder(_Tokens().eval(), []).smoothquant_variants(family, family.recipe)
    assert {(c.alpha, c.recipe.activation_calibrator.kind) for c in variants} == {
        (a, kind) for a in SMOOTHING_ALPHAS for kind in ("histogram", "minmax")
    }
    assert len({c.name for c in variants}) == len(variants)


def test_the_symmetric_family_offers_calibrator_variants_from_its_own_statistics():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    family = {f.name: f for f in families(net, "openvino")[0]}["static-sym"]
    builder = Builder(net, [torch.randn(2, 3, 8, 8) for _ in range(2)])
    variants = builder.calibrator_variants(family)
    assert variants and all(v.recipe.activations.symmetric for v in variants)
    for variant in variants[:2]:
        builder.build(variant)
