"""save/load across format versions."""

import json

import pytest
import safetensors.torch
import torch

import quantpilot as qp


def test_a_format_1_file_with_unpacked_int4_codes_gets_a_one_line_error(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(64, 8))
    recipe = qp.Recipe(weights=qp.QuantSpec("int4", granularity=qp.PerChannel(0)), activations=None)
    qmodel = qp.freeze(qp.quantize(net, recipe))
    directory = qp.save(qmodel, tmp_path / "q")
    # Rewrite it as format 1 wrote it: one int4 code per byte under `weight_int`.
    state = safetensors.torch.load_file(directory / "model.safetensors")
    state["0.weight_int"] = qmodel[0].weight_codes()
    del state["0.weight_packed"]
    safetensors.torch.save_file(state, directory / "model.safetensors", metadata={"format": "quantpilot"})
    meta = json.loads((directory / "quantpilot.json").read_text())
    (directory / "quantpilot.json").write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(ValueError, match="stores 4-bit codes one per byte .*quantize and save the model again"):
        qp.load(net, directory)


def test_an_int8_format_1_file_still_loads(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(16, 8))
    qmodel = qp.freeze(qp.quantize(net, "w8a16"))
    directory = qp.save(qmodel, tmp_path / "q")
    meta = json.loads((directory / "quantpilot.json").read_text())
    recipe = {k: v for k, v in meta["recipe"].items() if k not in ("steps", "layers", "scale_dtype")}
    (directory / "quantpilot.json").write_text(
        json.dumps({**meta, "format_version": 1, "recipe": {**recipe, "format_version": 1}})
    )
    x = torch.randn(2, 16)
    assert torch.equal(qp.load(net, directory)(x), qmodel(x))
