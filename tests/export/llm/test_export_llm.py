"""qp.export_llm: write, reload in the engine, compare perplexity; refusals are one-line ValueErrors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import quantpilot as qp
from quantpilot.cli_export_llm import export_llm_dir
from quantpilot.export.llm import engine_check

from .conftest import TEXT


def test_hf_export_is_checked_in_transformers(rtn_models, tmp_path):
    result = qp.export_llm(rtn_models["llama"], None, tmp_path / "hf", format="hf")
    assert result.engine == "transformers" and result.passed
    assert result.relative_difference < 1e-6 and result.perplexity_engine == pytest.approx(result.perplexity_quantpilot)


def test_gguf_export_with_tokenizer_and_text(rtn_models, tmp_path, bpe_tokenizer):
    result = qp.export_llm(rtn_models["gpt2"], bpe_tokenizer, tmp_path, format="gguf", check_text=" ".join(TEXT[:3]))
    assert result.path == tmp_path / "model.gguf" and result.passed
    assert result.details.ggml_type == "Q4_1" and result.details.tokenizer == "gpt2"
    # llama.cpp when llama-cpp-python is installed, else every tensor read back by the gguf reader
    assert result.engine in ("llama.cpp", "gguf reader") and result.relative_difference < 1e-3


def test_an_export_the_engine_does_not_reproduce_is_removed(rtn_models, tmp_path, monkeypatch):
    real = engine_check.engine_logits

    def shifted(fmt, path, ids, vocab_size=None):
        logits = real(fmt, path, ids, vocab_size)
        return logits + np.linspace(0, 1, logits.shape[-1], dtype=np.float32)

    monkeypatch.setattr("quantpilot.export.llm.engine_logits", shifted)
    with pytest.raises(
        ValueError, match=r"does not reproduce the model in transformers: relative difference .* > 0.001"
    ):
        qp.export_llm(rtn_models["llama"], None, tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf").exists()


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2)
    return OPTForCausalLM(config)


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(format="onnx"), "format must be one of hf, gguf, openvino"),
        (dict(format="hf", gguf_type="q4_0"), "gguf_type applies to format='gguf' only"),
        (dict(format="gguf", model=_opt), r"model_type one of gpt2, llama\); got model_type 'opt'"),
    ],
    ids=["format", "gguf-type-elsewhere", "architecture"],
)
def test_refusals_are_one_line_value_errors(rtn_models, tmp_path, args, message):
    model = args.pop("model", lambda: rtn_models["llama"])()
    with pytest.raises(ValueError, match=message) as err:
        qp.export_llm(model, None, tmp_path / "out", **args)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_command_line_side_refuses_what_is_not_a_saved_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a folder quantpilot saved"):
        export_llm_dir(tmp_path / "missing", "gguf", tmp_path / "m.gguf")
    with pytest.raises(ValueError, match="format must be one of"):
        export_llm_dir(tmp_path, "tflite", tmp_path / "m")


def test_perplexity_is_exp_of_the_mean_cross_entropy():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [1.0, 1.0]]]))
    assert engine_check.perplexity(logits, torch.tensor([[0, 0, 1]])) == pytest.approx(
        np.exp(-(np.log(0.5) + np.log(0.75)) / 2)
    )
