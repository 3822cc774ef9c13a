"""The one decision of what is quantizable: subclasses count, unhandled weights are named in a warning."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.nn.registry import is_linear, linear_layers, lookup, quantizable_layers, unhandled_layers

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class PlainSubclass(nn.Linear):
    """A user's Linear that adds nothing to the computation."""


class OtherMath(nn.Linear):
    """Overrides forward with different math: must not be replaced by a QuantLinear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class SameConv(nn.Conv2d):
    pass


class Experts(nn.Module):
    """A mixture-of-experts block storing its experts as one 3-D tensor (no registered type)."""

    def __init__(self, n: int = 4, dim: int = 8) -> None:
        super().__init__()
        self.gate_up = nn.Parameter(torch.randn(n, dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,ede->be", x, self.gate_up)


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (PlainSubclass(2, 2), "Linear"),
        (SameConv(2, 2, 1), "Conv2d"),
        (OtherMath(2, 2), None),
        (nn.MultiheadAttention(4, 1).out_proj, None),
        (nn.GRU(2, 2), None),
    ],
    ids=["linear-subclass", "conv-subclass", "forward-override", "mha-out-proj", "gru"],
)
def test_lookup_walks_the_mro(module, expected):
    entry = lookup(module)
    assert (entry.name if entry else None) == expected


def test_walkers_agree_and_skip():
    net = nn.Sequential(PlainSubclass(4, 4), OtherMath(4, 4), nn.Conv1d(4, 4, 1), nn.Linear(4, 4))
    assert [n for n, _ in quantizable_layers(net)] == ["0", "2", "3"]
    assert [n for n, _ in linear_layers(net, skip=("3",))] == ["0"]
    assert is_linear(net[0]) and not is_linear(net[1]) and not is_linear(net[2])
    with pytest.raises(TypeError, match="not one string"):
        linear_layers(net, skip="3")


def test_user_subclass_is_quantized():
    torch.manual_seed(0)
    net = nn.Sequential(PlainSubclass(8, 8), nn.ReLU(), nn.Linear(8, 2))
    q = qp.freeze(qp.quantize(net, "w8a16"))
    assert [n for n, _ in qp.quantized_layers(q)] == ["0", "2"]
    x = torch.randn(3, 8)
    assert torch.allclose(q(x), net(x), atol=0.05)


@pytest.mark.parametrize(
    ("extra", "named"),
    [(Experts(), "1 (Experts)"), (OtherMath(8, 8), "1 (OtherMath: a Linear subclass overriding forward)")],
    ids=["moe-3d-experts", "forward-override"],
)
def test_unsupported_parameterised_module_is_named(extra, named):
    net = nn.Sequential(nn.Linear(8, 8), extra)
    with pytest.warns(UserWarning, match="keep their weights in float") as caught:
        qp.quantize(net, "w8a16")
    message = str(caught[0].message)
    assert named in message
    names, share = unhandled_layers(net)
    assert names == [named]
    assert f"{share:.1%}" in message and 0.4 < share < 1


def test_skip_silences_and_norms_do_not_count():
    net = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), Experts())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qp.quantize(net, qp.Recipe.preset("w8a16").replace(skip=("2",)))
    assert unhandled_layers(net, skip=("2",)) == ([], 0.0)


# --- Falcon: FalconLinear is a Linear subclass overriding forward with the same math -----------------

transformers = pytest.importorskip("transformers")


def _tiny_falcon(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.FalconConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False
    )
    return transformers.FalconForCausalLM(config).eval()


def _linear_share(model: nn.Module) -> float:
    """Share of the Linear weights (any nn.Linear subclass) that are quantized."""
    float_model = _tiny_falcon()
    names = {n for n, m in float_model.named_modules() if isinstance(m, nn.Linear)}
    quantized = {n for n, _ in qp.quantized_layers(model)}
    return len(names & quantized) / len(names)


@pytest.mark.parametrize("preset", ["int8-static", "w8a16"], ids=["int8-static", "w8a16"])
def test_falcon_presets_quantize_every_linear(preset):
    model = _tiny_falcon()
    ids = torch.randint(0, 64, (2, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing in Falcon is left float unannounced: nothing to warn about
        q = qp.quantize(model, preset)
    assert type(model.transformer.h[0].self_attention.dense).__name__ == "FalconLinear"
    assert _linear_share(q) == 1.0
    if preset == "int8-static":
        with qp.calibrate(q):
            q(input_ids=ids)
    qp.freeze(q)
    with torch.no_grad():
        ref, out = model(input_ids=ids).logits, q(input_ids=ids).logits
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("method", ["rtn", "gptq"], ids=["rtn", "gptq"])
def test_falcon_weight_only_checkpoints_reload(method, tmp_path):
    model = _tiny_falcon()
    ids = torch.randint(0, 64, (2, 12))
    if method == "rtn":
        q = qp.algorithms.rtn(model, bits=4, group_size=32)
    else:
        calib = [{"input_ids": torch.randint(0, 64, (1, 64))} for _ in range(8)]
        q = qp.algorithms.gptq(model, calib, bits=4, group_size=32)
    assert _linear_share(q) == 1.0 - 1 / 9  # every Linear but the output head (DEFAULT_SKIP)
    loaded = qp.load(_tiny_falcon(seed=1), qp.save(q, tmp_path / method))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, q(input_ids=ids).logits)
