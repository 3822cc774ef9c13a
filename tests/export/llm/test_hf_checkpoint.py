"""Hugging Face export: compressed-tensors pack-quantized, loaded by transformers' own from_pretrained on CPU."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import quantpilot as qp
from quantpilot.export.llm.hf_checkpoint import write_hf_checkpoint
from quantpilot.testing import tiny_causal_lm

from .conftest import frozen

IDS = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(3))
CASES = {
    "rtn-w4-g128": lambda models: models["llama"],
    "w4-sym-g32": lambda models: qp.algorithms.rtn(tiny_causal_lm("llama"), bits=4, group_size=32, symmetric=True),
    "w8a16": lambda models: frozen("llama", qp.Recipe.preset("w8a16")),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_from_pretrained_computes_our_logits(rtn_models, case, tmp_path, bpe_tokenizer):
    model = CASES[case](rtn_models)
    out = write_hf_checkpoint(model, bpe_tokenizer, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert config["ignore"] == ([] if case == "w8a16" else ["lm_head"])  # w8a16 quantizes the head too
    weights = config["config_groups"]["group_0"]["weights"]
    assert weights["num_bits"] == (8 if case == "w8a16" else 4)
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        ours, theirs = model(input_ids=IDS).logits, loaded(input_ids=IDS).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert AutoTokenizer.from_pretrained(str(out))("The fox").input_ids == bpe_tokenizer("The fox").input_ids


def test_codes_are_packed_not_requantized(rtn_models, tmp_path):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    model = rtn_models["llama"]
    tensors = load_file(str(write_hf_checkpoint(model, None, tmp_path / "hf") / "model.safetensors"))
    layer = model.get_submodule("model.layers.1.mlp.down_proj")
    codes = unpack_from_int32(tensors["model.layers.1.mlp.down_proj.weight_packed"], 4, torch.Size([128, 256]))
    assert torch.equal(codes.to(torch.int32) + 8, layer.weight_codes().to(torch.int32))
    assert torch.equal(tensors["model.layers.1.mlp.down_proj.weight_scale"], layer.weight_scale.float())


def test_gpt2_conv1d_is_refused_naming_the_formats_that_take_it(rtn_models, tmp_path):
    with pytest.raises(ValueError, match="not GPT-2's Conv1D: use gguf or openvino"):
        write_hf_checkpoint(rtn_models["gpt2"], None, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
