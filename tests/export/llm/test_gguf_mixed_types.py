"""GGUF of a model mixing 4-bit layers and an 8-bit token table: each tensor gets the type its codes fit."""

from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest

import quantpilot as qp
from quantpilot.export.llm.gguf_writer import write_gguf


@pytest.fixture(scope="module")
def mixed(rtn_models):
    """RTN W4 g128 blocks (asymmetric) and the token table, tied to the head, as 8-bit codes per row."""
    return qp.algorithms.quantize_embeddings(rtn_models["gpt2"], bits=8, group_size=None, skip=("transformer.wpe",))


def _types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def test_default_keeps_4_bit_blocks_and_writes_the_table_q8_0(mixed, tmp_path):
    with pytest.warns(UserWarning, match=r"1 of 9 weights do not map to q8_0 exactly .* only when they are symmetric"):
        result = write_gguf(mixed, None, tmp_path / "m.gguf")
    types = _types(result.path)
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_qkv.weight"] == "Q4_1"
    assert result.ggml_type == "Q4_1" and result.requantized == ("token_embd.weight",)
    assert 5.0 < result.bits_per_weight < 8.5  # not every weight at Q8_0's 8.5 bits, as before
    reader = {t.name: t for t in gguf.GGUFReader(str(result.path)).tensors}
    qkv = reader["blk.0.attn_qkv.weight"]
    ours = mixed.transformer.h[0].attn.c_attn.dequantized_weight().float().numpy()  # (out, in), as GGUF rows
    back = gguf.quants.dequantize(qkv.data, qkv.tensor_type)
    np.testing.assert_allclose(back, ours, atol=2e-3 * np.abs(ours).max())  # codes kept, fp16 offset only


def test_an_explicit_type_still_applies_to_every_weight(mixed, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = write_gguf(mixed, None, tmp_path / "m.gguf", "q8_0")
    assert set(_types(result.path).values()) >= {"Q8_0"} and result.ggml_type == "Q8_0"
    assert "Q4_1" not in _types(result.path).values() and result.bits_per_weight == 8.5
