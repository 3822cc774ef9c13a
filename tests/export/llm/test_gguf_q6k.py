"""Q6_K from 6-bit g16 codes: bit for bit against the gguf package's dequantizer, and refused off the grid."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

import quantpilot as qp
from quantpilot.export.llm import gguf_writer
from quantpilot.export.llm.gguf_blocks import encode
from quantpilot.export.llm.gguf_kquants import Q6_K_BYTES, q6_k_scales
from quantpilot.export.llm.gguf_writer import default_gguf_type, write_gguf
from quantpilot.export.llm.weights import LMTensor

Q6_K = gguf.GGMLQuantizationType.Q6_K


def six_bit(rows: int, cols: int, group: int = 16, seed: int = 0, max_sc: int = 127) -> LMTensor:
    """Random 6-bit codes whose scales are `d * sc_j` per 256 columns, d fp16 with 4 significant bits."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 64, (rows, cols), dtype=torch.uint8, generator=g)
    blocks, per_block = (rows * cols // 256, 256 // group) if group <= 256 else (rows * cols // group, 1)
    mantissa = torch.randint(8, 16, (blocks, 1), generator=g).float()
    d = (mantissa * 2.0 ** torch.randint(-24, -6, (blocks, 1), generator=g).float()).half().float()
    sc = torch.randint(0, max_sc + 1, (blocks, per_block), generator=g).float()
    scale = (d * sc).reshape(rows, cols // group)
    value = (codes.float() - 32) * scale.repeat_interleave(group, dim=1)
    return LMTensor(value, codes, scale, torch.full_like(scale, 32.0), 6, group)


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize(
    ("rows", "cols", "group", "max_sc"),
    [(8, 256, 16, 127), (4, 768, 16, 127), (3, 512, 32, 127), (5, 256, 16, 9), (2, 512, 512, 127)],
    ids=["g16", "three-superblocks", "g32", "small-sc", "per-row"],
)
def test_on_grid_codes_are_q6_k_bit_for_bit(rows, cols, group, max_sc):
    t = six_bit(rows, cols, group, seed=rows, max_sc=max_sc)
    e = encode(t, "q6_k")
    assert (e.ggml_type, e.mapping, e.max_abs_error) == ("Q6_K", "exact", 0.0)
    assert e.data.shape == (rows, cols // 256 * Q6_K_BYTES) and default_gguf_type({"w": t}) == "q6_k"
    back = gguf.quants.dequantize(e.data, Q6_K).reshape(rows, cols)
    np.testing.assert_array_equal(_bits(back), _bits(t.value.numpy()))


def test_zero_superblock_and_negative_exponents_decompose():
    t = six_bit(2, 512, seed=3)
    scale = t.scale.clone()
    scale[0, :16] = 0.0  # a superblock of zeros (an all-padding row): d = 0
    t = LMTensor((t.codes.float() - 32) * scale.repeat_interleave(16, 1), t.codes, scale, t.zero_point, 6, 16)
    d, sc = q6_k_scales(t)
    assert d[0] == 0 and (sc[0] == 0).all() and (d[1:] > 0).all()
    back = gguf.quants.dequantize(encode(t, "q6_k").data, Q6_K).reshape(2, 512)
    np.testing.assert_array_equal(_bits(back), _bits(t.value.numpy()))


def _off_grid() -> LMTensor:
    t = six_bit(4, 256, seed=5)
    scale = (t.scale * torch.linspace(1.0, 1.37, 16)).half().float()  # fp16, but no common d * integer
    return LMTensor((t.codes.float() - 32) * scale.repeat_interleave(16, 1), t.codes, scale, t.zero_point, 6, 16)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_off_grid, "scales that are not fp16 d"),
        (lambda: LMTensor(*_narrow()), "128 columns"),
        (lambda: LMTensor(torch.zeros(2, 256)), "a float weight"),
    ],
    ids=["off-grid-scales", "width-128", "float"],
)
def test_q6_k_is_refused_off_the_grid(make, why):
    t = make()
    with pytest.raises(ValueError, match=f"q6_k takes 6-bit codes from quantize_embeddings.*got {why}"):
        encode(t, "q6_k")
    if t.codes is not None:  # 6-bit off the grid falls back to Q8_0, requantized (one scale per 32, not 16)
        assert default_gguf_type({"w": t}) == "q8_0"
        e = encode(t, "q8_0")
        assert e.mapping == "requantized" and 0 < e.relative_rms_error < 2e-2


def _narrow() -> tuple:
    """A 6-bit g16 tensor 128 wide: each scale alone is on the grid, but Q6_K rows are 256 long."""
    t = six_bit(4, 256, seed=2)
    half = (slice(None), slice(0, 128))
    scale = t.scale[:, :8].contiguous()
    return t.value[half].contiguous(), t.codes[half].contiguous(), scale, torch.full_like(scale, 32.0), 6, 16


def test_six_bit_in_groups_of_32_off_grid_is_q8_0_exact():
    t = six_bit(2, 256, 32, seed=4)
    scale = (t.scale * torch.linspace(1.0, 1.3, 8)).half().float()  # fp16 scales, off the d * sc_j grid
    t = LMTensor((t.codes.float() - 32) * scale.repeat_interleave(32, 1), t.codes, scale, t.zero_point, 6, 32)
    assert default_gguf_type({"w": t}) == "q8_0"
    e = encode(t, "q8_0")
    assert e.mapping == "exact" and e.max_abs_error == 0.0


@pytest.fixture(scope="module")
def llama256():
    """A tiny random Llama 256 wide (Q6_K rows are 256 weights), RTN 4-bit g32 blocks, float table."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=256, intermediate_size=256, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return qp.algorithms.rtn(LlamaForCausalLM(cfg), bits=4, group_size=32)


@pytest.fixture()
def six_bit_table(monkeypatch):
    """The writer reads the token table as a 6-bit g16 tensor on the grid (what quantize_embeddings(bits=6) gives)."""
    table = six_bit(64, 256, seed=7)
    real = gguf_writer.lm_tensors

    def patched(model):
        out = real(model)
        out["model.embed_tokens.weight"] = table
        return out

    monkeypatch.setattr(gguf_writer, "lm_tensors", patched)
    return table


def test_writer_keeps_4_bit_blocks_and_writes_the_6_bit_table_q6_k(llama256, six_bit_table, tmp_path):
    result = write_gguf(llama256, None, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(result.path))
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["token_embd.weight"].tensor_type.name == "Q6_K"
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name in ("Q4_0", "Q4_1")
    assert result.requantized == () and result.ggml_type in ("Q4_0", "Q4_1")
    back = gguf.quants.dequantize(tensors["token_embd.weight"].data, Q6_K).reshape(64, 256)
    np.testing.assert_array_equal(_bits(back), _bits(six_bit_table.value.numpy()))
    with pytest.raises(ValueError, match=r"^blk\.0\.\w+\.weight: q6_k takes 6-bit codes .* got uint4 codes"):
        write_gguf(llama256, None, tmp_path / "all.gguf", "q6_k")


def test_a_file_of_only_a_6_bit_table_is_labelled_q6_k(six_bit_table, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=256, intermediate_size=256, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    result = write_gguf(LlamaForCausalLM(cfg), None, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(result.path))
    assert result.ggml_type == "Q6_K" and result.bits_per_weight == 6.5625  # 210 bytes per 256 weights
    assert int(reader.fields["general.file_type"].parts[-1][0]) == gguf.LlamaFileType.MOSTLY_Q6_K


def test_llama_cpp_layout_end_to_end_keeps_every_code(llama256, tmp_path):
    # llama.cpp's own Q4_0 file: symmetric g32 layers (Q4_0) and the tied table on the Q6_K grid, both
    # made by quantpilot and written without requantizing; the GGUF dequantizes to quantpilot's weights.
    from transformers import LlamaForCausalLM

    config = llama256.config.to_dict() | {"tie_word_embeddings": True}  # the table is the head, as the testbed's
    float_model = LlamaForCausalLM(type(llama256.config).from_dict(config))
    q = qp.algorithms.rtn(float_model, bits=4, group_size=32, symmetric=True)
    q = qp.algorithms.quantize_embeddings(q, bits=6, group_size=16, superblock=256)
    result = write_gguf(q, None, tmp_path / "m.gguf")
    assert result.requantized == () and result.ggml_type == "Q4_0"
    tensors = {t.name: t for t in gguf.GGUFReader(str(result.path)).tensors}
    types = {t.tensor_type.name for n, t in tensors.items() if n.endswith(".weight") and "norm" not in n}
    assert types == {"Q4_0", "Q6_K"} and tensors["token_embd.weight"].tensor_type.name == "Q6_K"
    table = q.model.embed_tokens.quantized_weight(torch.float32).numpy()
    back = gguf.quants.dequantize(tensors["token_embd.weight"].data, Q6_K).reshape(table.shape)
    np.testing.assert_array_equal(_bits(back), _bits(table))
    up = q.model.layers[0].mlp.up_proj.quantized_weight(torch.float32).numpy()
    back_up = gguf.quants.dequantize(tensors["blk.0.ffn_up.weight"].data, gguf.GGMLQuantizationType.Q4_0)
    np.testing.assert_array_equal(_bits(back_up.reshape(up.shape)), _bits(up))
