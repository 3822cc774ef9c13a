"""Quantize and load onto models built on the meta device: only the file's storage is materialised."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import quantpilot as qp
from quantpilot.meta_device import has_meta_tensors

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _net() -> nn.Module:
    return nn.Sequential(nn.Embedding(16, 128), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 16))


def _saved(tmp_path, recipe: str, build=_net):
    torch.manual_seed(0)
    model = build().eval()
    q = qp.quantize(model, recipe)
    x = torch.randint(0, 16, (4, 6))
    if recipe == "int8-static":
        with qp.calibrate(q):
            q(x)
    return qp.save(qp.freeze(q), tmp_path / recipe), q, x


def test_quantize_on_meta_installs_and_refuses_to_compute():
    with torch.device("meta"):
        model = _net()
    q = qp.quantize(model, "int8-static")
    assert [n for n, _ in qp.quantized_layers(q)] == ["0", "1", "3"] and q[1].weight.is_meta
    with pytest.raises(ValueError, match="calibration needs real data: the model is on the meta device"):
        with qp.calibrate(q):
            q[1].input_quantizer.calibrator.collect(torch.empty(2, 128, device="meta"))
    with pytest.raises(ValueError, match="the model is on the meta device; load its weights first"):
        qp.freeze(qp.quantize(model, "w8a16"))


@pytest.mark.parametrize("recipe", ["int8-static", "w8a16", "w4a16-g128"], ids=["int8-static", "w8a16", "w4a16"])
def test_load_onto_meta_model_is_bit_exact(recipe, tmp_path):
    directory, q, x = _saved(tmp_path, recipe)
    with torch.device("meta"):
        skeleton = _net()
    loaded = qp.load(skeleton, directory)
    assert not has_meta_tensors(loaded) and has_meta_tensors(skeleton)  # the float model is left as it was
    assert torch.equal(loaded(x), q(x))


def test_tied_weights_are_shared_again(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.mid, self.head = nn.Embedding(16, 64), nn.Linear(64, 64), nn.Linear(64, 16, bias=False)
            self.head.weight = self.emb.weight  # both stay float: the file holds one copy

        def forward(self, ids):
            return self.head(self.mid(self.emb(ids)))

    torch.manual_seed(0)
    recipe = qp.Recipe.preset("w8a16").replace(module_types=("Linear",), skip=("head",))
    q = qp.freeze(qp.quantize(Tied(), recipe))
    directory = qp.save(q, tmp_path / "tied")
    with torch.device("meta"):
        skeleton = Tied()
    loaded = qp.load(skeleton, directory)
    x = torch.randint(0, 16, (2, 5))
    assert loaded.head.weight is loaded.emb.weight and not has_meta_tensors(loaded)
    assert torch.equal(loaded(x), q(x))


class _WithDerived(nn.Module):
    """A non-persistent buffer computed at construction, as rotary embeddings hold."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.register_buffer("freq", torch.arange(8.0), persistent=False)

    def forward(self, x):
        return self.lin(x * self.freq)


def test_meta_buffers_nothing_recomputes_are_named(tmp_path):
    directory, _, _ = _saved(tmp_path, "w8a16", _WithDerived)
    with torch.device("meta"):
        skeleton = _WithDerived()
    with pytest.raises(ValueError, match=r"buffers \['freq'\] are not in the file .* init_empty_weights"):
        qp.load(skeleton, directory)


def test_real_buffers_with_meta_parameters_load(tmp_path):
    directory, q, _ = _saved(tmp_path, "w8a16", _WithDerived)
    skeleton = _WithDerived().to_empty(device="meta")  # what init_empty_weights() gives: meta parameters...
    skeleton.freq = torch.arange(8.0)  # ...and real buffers
    x = torch.randn(3, 8)
    assert torch.equal(qp.load(skeleton, directory)(x), q(x))


# --- a tiny Llama: rotary inv_freq is recomputed by transformers' own _init_weights -----------------

transformers = pytest.importorskip("transformers")


def _llama() -> nn.Module:
    from tests.algorithms._tiny_lms import tiny_llama

    return tiny_llama()


@pytest.mark.parametrize("recipe", ["int8-static", "w8a16"], ids=["int8-static", "w8a16"])
def test_llama_built_on_meta_loads_bit_exact(recipe, tmp_path):
    torch.manual_seed(0)
    model = _llama()
    ids = torch.randint(0, 97, (2, 10))
    q = qp.quantize(model, recipe)
    if recipe == "int8-static":
        with qp.calibrate(q):
            q(input_ids=ids)
    directory = qp.save(qp.freeze(q), tmp_path / recipe)
    with torch.device("meta"):
        skeleton = _llama()
    loaded = qp.load(skeleton, directory)
    assert not has_meta_tensors(loaded)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, q(input_ids=ids).logits)


def test_llama_rtn_checkpoint_loads_onto_meta(tmp_path):
    torch.manual_seed(0)
    q = qp.algorithms.rtn(_llama(), bits=4, group_size=32)
    directory = qp.save(q, tmp_path / "rtn")
    with torch.device("meta"):
        skeleton = _llama()
    loaded = qp.load(skeleton, directory)
    ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, q(input_ids=ids).logits)


def test_freeze_on_meta_weights_is_a_one_line_error():
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Linear(128, 128))
    qmodel = qp.quantize(net, "w4a16-g128")
    with pytest.raises(ValueError, match="meta device; load its weights first"):
        qp.freeze(qmodel)
