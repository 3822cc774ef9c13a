"""GGUF export: read back with the gguf package's reader and dequantizer, compared with quantpilot's weights."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

import quantpilot as qp
from quantpilot.export.llm.gguf_writer import write_gguf
from quantpilot.nn.quant_module import QuantModule
from quantpilot.spec import PerChannel, QuantSpec
from quantpilot.testing import tiny_causal_lm

from .conftest import frozen

KINDS = ("gpt2", "llama")
NAMES = {  # HF layer -> GGUF tensor, written out here independently of gguf's name map
    "gpt2": {
        "transformer.h.1.attn.c_attn": "blk.1.attn_qkv.weight",
        "transformer.h.0.mlp.c_proj": "blk.0.ffn_down.weight",
    },
    "llama": {
        "model.layers.0.self_attn.q_proj": "blk.0.attn_q.weight",
        "model.layers.1.self_attn.k_proj": "blk.1.attn_k.weight",
        "model.layers.1.mlp.gate_proj": "blk.1.ffn_gate.weight",
    },
}


def _llama_cpp_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter permutation of q/k rows (HF rotate-half -> interleaved)."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _read(path) -> tuple[dict, gguf.GGUFReader]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}, reader


def _ours(model, layer: str) -> np.ndarray:
    w = model.get_submodule(layer).dequantized_weight(torch.float32).numpy()
    if "q_proj" in layer or "k_proj" in layer:
        w = _llama_cpp_rows(w, model.config.num_attention_heads)
    return w


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_q4_1_keeps_the_codes_of_asymmetric_g128(rtn_models, kind, tmp_path, bpe_tokenizer):
    model = rtn_models[kind]
    result = write_gguf(model, bpe_tokenizer, tmp_path / "m.gguf")
    assert result.ggml_type == "Q4_1" and result.requantized == () and result.bits_per_weight == 5.0
    tensors, reader = _read(result.path)
    for layer, name in NAMES[kind].items():
        ours = _ours(model, layer)
        scale = model.get_submodule(layer).weight_scale.float().max().item()
        # codes and scale exact; only the offset -z*s is rounded to fp16 (< 0.4 % of a step)
        assert np.abs(tensors[name] - ours).max() <= 0.004 * scale, name
    assert _field(reader, "general.architecture") == kind
    assert _field(reader, f"{kind}.block_count") == 2
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 512 and tokens[300] == "[PAD300]"
    assert tokens[:3] == [bpe_tokenizer.convert_ids_to_tokens(i) for i in range(3)]
    assert len(_field(reader, "tokenizer.ggml.merges")) > 0
    if kind == "llama":
        assert _field(reader, "llama.attention.head_count_kv") == 2 and "output.weight" in tensors
    else:
        assert "output.weight" not in tensors  # tied head: llama.cpp reuses token_embd


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_symmetric_groups_of_32_are_q4_0_bit_exact(kind, tmp_path):
    model = qp.algorithms.rtn(tiny_causal_lm(kind), bits=4, group_size=32, symmetric=True)
    result = write_gguf(model, None, tmp_path / "m.gguf")
    assert result.ggml_type == "Q4_0" and result.worst_relative_rms_error == 0.0
    tensors, reader = _read(result.path)
    for layer, name in NAMES[kind].items():
        np.testing.assert_array_equal(tensors[name], _ours(model, layer), err_msg=name)
    assert _field(reader, "tokenizer.ggml.model") == "no_vocab"


def test_q8_0_of_4_bit_codes_is_exact(rtn_models, tmp_path):
    model = rtn_models["llama"]
    result = write_gguf(model, None, tmp_path / "m.gguf", "q8_0")
    tensors, _ = _read(result.path)
    assert result.requantized == ()
    for layer, name in NAMES["llama"].items():
        np.testing.assert_array_equal(tensors[name], _ours(model, layer), err_msg=name)


def test_types_the_codes_do_not_map_to_are_requantized_with_a_warning(rtn_models, tmp_path):
    with pytest.warns(UserWarning, match=r"requantized by the gguf quantizer \(relative RMS error up to .*q4_1 keeps"):
        result = write_gguf(rtn_models["gpt2"], None, tmp_path / "m.gguf", "q4_0")
    assert len(result.requantized) == 8 and 0.01 < result.worst_relative_rms_error < 0.2


def test_int8_per_channel_goes_to_q8_0_with_codes_kept(tmp_path):
    model = frozen("llama", qp.Recipe.preset("w8a16"))
    result = write_gguf(model, None, tmp_path / "m.gguf")
    assert result.ggml_type == "Q8_0" and result.requantized == ()
    assert result.worst_relative_rms_error < 1e-3  # the fp32 scale rounded to fp16


@pytest.mark.parametrize(
    "bad, message",
    [("q5_k", "gguf_type must be one of q8_0, q4_0, q4_1"), ("fp8", "the LM exports take 4-, 6- or 8-bit integer")],
    ids=["gguf-type", "fp8-weights"],
)
def test_unsupported_types_are_one_line_errors(rtn_models, tmp_path, bad, message):
    fp8 = qp.Recipe.preset("w8a16").replace(weights=QuantSpec("fp8_e4m3", granularity=PerChannel(0)))
    model = rtn_models["gpt2"] if bad != "fp8" else frozen("llama", fp8)
    with pytest.raises(ValueError, match=message) as err:
        write_gguf(model, None, tmp_path / "m.gguf", bad if bad != "fp8" else None)
    assert "\n" not in str(err.value) and not (tmp_path / "m.gguf").exists()


def test_every_quantized_layer_is_written(rtn_models, tmp_path):
    model = rtn_models["llama"]
    tensors, _ = _read(write_gguf(model, None, tmp_path / "m.gguf").path)
    quantized = [m for m in model.modules() if isinstance(m, QuantModule)]
    assert len(quantized) == 14 and sum(n.startswith("blk.") and n.endswith(".weight") for n in tensors) == 18


def test_a_packed_token_table_and_its_tied_head_are_written_once(rtn_models, tmp_path):
    model = qp.algorithms.quantize_embeddings(rtn_models["gpt2"], bits=4, group_size=32, skip=("transformer.wpe",))
    tensors, reader = _read(write_gguf(model, None, tmp_path / "m.gguf").path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q4_1" and "output.weight" not in tensors
    table = model.transformer.wte.dequantized_weight(torch.float32).numpy()
    assert (
        np.abs(tensors["token_embd.weight"] - table).max()
        <= 0.004 * model.transformer.wte.weight_scale.float().max().item()
    )
