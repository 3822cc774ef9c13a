"""GGUF for llama.cpp, written with the `gguf` package's `GGUFWriter`: GPT-2 and Llama.

Quantized layers become Q8_0 / Q4_0 / Q4_1 blocks built from quantpilot's own codes where the type
can hold them (`gguf_blocks`' table: symmetric uint4 groups of 32k -> Q4_0 exact; any uint4 groups
of 32k -> Q4_1 with the offset rounded to fp16; 4-bit codes -> Q8_0 exact; 6-bit g16 token tables
from `quantize_embeddings(bits=6, group_size=16)` -> Q6_K exact, as llama.cpp's own 4-bit files keep
their table). A weight the chosen type cannot hold (e.g. asymmetric g128 codes asked as Q4_0, 6-bit
g16 codes off Q6_K's 256-column grid, which go to Q8_0) is requantized by the gguf package's
quantizer with a warning that states the error it adds: the export still runs, and says so. Float
matrices (the output head, the token table when it stays float) are written f16, as llama.cpp's
converter writes them; norms and biases f32. Names come from `gguf.get_tensor_name_map`; Llama's
query/key rows are permuted to the interleaved rotary layout llama.cpp's `llama` architecture uses
(a row permutation: codes and their qparams move together, nothing is requantized).

Example:
    >>> import tempfile, os, quantpilot as qp
    >>> from quantpilot.testing import tiny_causal_lm
    >>> q = qp.algorithms.rtn(tiny_causal_lm("llama"), bits=4, group_size=32)
    >>> r = write_gguf(q, None, os.path.join(tempfile.mkdtemp(), "m.gguf"))
    >>> r.ggml_type, r.requantized
    ('Q4_1', ())
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...atomic import atomic_path
from .gguf_blocks import GGUF_TYPES, encode
from .gguf_kquants import q6_k_scales
from .gguf_metadata import add_metadata
from .weights import LMTensor, architecture, lm_tensors

__all__ = ["write_gguf", "GGUFExport", "default_gguf_type"]

_FILE_TYPES = {
    "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1", "q6_k": "MOSTLY_Q6_K", "f16": "MOSTLY_F16",
}  # fmt: skip


@dataclass(frozen=True)
class GGUFExport:
    """What `write_gguf` wrote: the file, its type, which weights kept their codes, and the error added.

    Example:
        >>> GGUFExport(Path("m.gguf"), "Q4_0", 4.5, (), 0.0, "gpt2").requantized
        ()
    """

    path: Path
    ggml_type: str  # the type most quantized weights use (a mixed 4/6/8-bit model has per-tensor types)
    bits_per_weight: float  # of the quantized layers' weights, as stored (codes + block scales)
    requantized: tuple[str, ...]  # names of weights the gguf quantizer had to round again
    worst_relative_rms_error: float  # over quantized weights, GGUF weight against quantpilot's
    tokenizer: str  # llama.cpp tokenizer model written: 'gpt2' (byte-level BPE) or 'no_vocab'


def default_gguf_type(tensors: dict[str, LMTensor]) -> str:
    """The type the codes map to exactly: q4_0 (all 4-bit symmetric), q4_1 (4-bit), q6_k, else q8_0.

    q6_k when every quantized tensor is 6-bit on Q6_K's grid (`gguf_kquants`); 6-bit codes off it
    get q8_0 (exact in groups of 32k, requantized in groups of 16). The writer asks per tensor.

    Example:
        >>> default_gguf_type({})
        'q8_0'
    """
    quantized = [t for t in tensors.values() if t.codes is not None]
    if quantized and all(t.bits == 4 and not t.signed for t in quantized):
        return "q4_0" if all(t.symmetric for t in quantized) else "q4_1"
    if quantized and all(t.bits == 6 and q6_k_scales(t) is not None for t in quantized):
        return "q6_k"
    return "q8_0"


def _rotary_order(rows: int, heads: int) -> torch.Tensor:
    """Row order taking HF's rotate-half q/k layout to llama.cpp's interleaved one (as its converter permutes)."""
    idx = torch.arange(rows)
    return idx.reshape(heads, 2, rows // heads // 2).transpose(1, 2).reshape(rows)


def _gguf_tensors(model: Any, arch: str) -> list[tuple[str, LMTensor]]:
    import gguf

    config = model.config
    tensors = lm_tensors(model)
    blocks = config.n_layer if arch == "gpt2" else config.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2 if arch == "gpt2" else gguf.MODEL_ARCH.LLAMA, blocks)
    out = []
    for hf_name, t in tensors.items():
        if hf_name.endswith("attn.masked_bias") or hf_name.endswith("attn.bias") and t.value.dim() > 1:
            continue  # GPT-2's causal-mask buffers in old checkpoints, not weights
        # A head tied to the token table is the same Parameter: lm_tensors gave it once, as the table, and
        # llama.cpp reuses token_embd when there is no output tensor. A head kept float beside a quantized
        # table (w4a16-g128) is its own tensor and is written as `output`.
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{hf_name} has no GGUF tensor name for {arch}; the GGUF export knows gpt2 and llama")
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            t = t.permute_rows(_rotary_order(t.shape[0], heads))
        out.append((name, t))
    return out


def write_gguf(model: Any, tokenizer: Any, path: str | Path, gguf_type: str | None = None) -> GGUFExport:
    """Write a frozen GPT-2 / Llama quantpilot model (and its tokenizer) as one GGUF file for llama.cpp.

    Args:
        model: a frozen quantpilot model of a transformers GPT-2 or Llama (weight-only 4/6/8-bit).
        tokenizer: its Hugging Face tokenizer (byte-level BPE is written; None -> token ids only).
        path: the .gguf file to create (never overwritten; written atomically).
        gguf_type: q8_0, q4_0, q4_1 or q6_k for every quantized weight (q6_k only holds 6-bit codes
            on its grid: anything else is a ValueError); default, per weight, the type its own codes
            map to exactly (`default_gguf_type`): 4-bit layers with an 8-bit (6-bit g16) token table
            become Q4_x blocks and a Q8_0 (Q6_K) table, as llama.cpp's own files mix types.
            A float model (no quantized layer) is written f16 whatever the type.

    Example:
        >>> import tempfile, os, quantpilot as qp
        >>> from quantpilot.testing import tiny_causal_lm
        >>> write_gguf(tiny_causal_lm("gpt2"), None, os.path.join(tempfile.mkdtemp(), "m.gguf"), "q5_k")
        Traceback (most recent call last):
        ValueError: gguf_type must be one of q8_0, q4_0, q4_1, q6_k, got 'q5_k'
    """
    import gguf

    arch = architecture(model)
    if gguf_type is not None and gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    tensors = _gguf_tensors(model, arch)
    # GGUF types are per tensor: each keeps its own codes unless one type is asked (decided once: for a 6-bit
    # table that means finding its Q6_K grid).
    own = {name: default_gguf_type({name: t}) for name, t in tensors if t.codes is not None and not gguf_type}
    kind = gguf_type or "f16"  # the file's label; a float model is the FP16 GGUF llama.cpp's quantizer starts from
    encoded = []
    for name, t in tensors:
        wanted = (gguf_type or own[name]) if t.codes is not None else ("f16" if t.value.dim() == 2 else "f32")
        if wanted != "f32" and t.value.shape[-1] % 32:
            wanted = "f32" if t.codes is None else wanted
            if t.codes is not None:
                raise ValueError(f"{name} has {t.value.shape[-1]} columns; GGUF blocks need a multiple of 32")
        try:
            encoded.append((name, t, encode(t, wanted)))
        except ValueError as err:  # q6_k asked for a weight off its grid: say which weight
            raise ValueError(f"{name}: {err}") from None
    quantized = [(n, e) for n, t, e in encoded if t.codes is not None]
    requantized = tuple(n for n, e in quantized if not e.exact)
    worst = max((e.relative_rms_error for _, e in quantized), default=0.0)
    if requantized:
        fits = {default_gguf_type({n: t}) for n, t in tensors if t.codes is not None} if gguf_type else set()
        advice = (
            f"{'/'.join(sorted(fits))} keeps this model's codes (leave gguf_type unset)"
            if gguf_type
            else "Q8_0 holds 8-bit codes exactly only when they are symmetric (6-bit codes: in groups of 32k)"
        )
        types = "/".join(sorted({e.ggml_type.lower() for _, e in quantized if not e.exact}))
        warnings.warn(
            f"{len(requantized)} of {len(quantized)} weights do not map to {types} exactly and were requantized "
            f"by the gguf quantizer (relative RMS error up to {worst:.2e} against quantpilot's weights); {advice}",
            stacklevel=2,
        )
    stored_bits = sum(e.data.nbytes * 8 for _, e in quantized)
    numel = sum(e.data.shape[0] * t.value.shape[1] for n, t, e in encoded if t.codes is not None)
    if quantized and gguf_type is None:  # the file's label: the type holding most quantized weights
        shares: dict[str, int] = {}
        for _, t, e in encoded:
            if t.codes is not None:
                shares[e.ggml_type.lower()] = shares.get(e.ggml_type.lower(), 0) + t.value.numel()
        kind = max(shares, key=shares.__getitem__)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[arch.upper()]])
        vocab = add_metadata(writer, model, tokenizer, arch, gguf.LlamaFileType[_FILE_TYPES[kind]])
        for name, _, e in encoded:
            writer.add_tensor(name, e.data, raw_dtype=gguf.GGMLQuantizationType[e.ggml_type])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return GGUFExport(Path(path), kind.upper(), stored_bits / max(numel, 1), requantized, worst, vocab)
