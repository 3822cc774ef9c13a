"""The GGUF key-values llama.cpp reads for GPT-2 and Llama: hyperparameters and the tokenizer.

The keys are the ones llama.cpp's own converter (`convert_hf_to_gguf.py`) writes for these two
families, set through `gguf.GGUFWriter`'s named setters. Tokenizers: byte-level BPE (GPT-2's, and
Llama-3-style `tokenizer.json`) is written as llama.cpp's `gpt2` vocabulary with its merges; no
tokenizer (or another kind) is written as `no_vocab`, which llama.cpp loads and runs on token ids.

Example:
    >>> from quantpilot.testing import tiny_causal_lm
    >>> hyperparameters(tiny_causal_lm("llama").config)["head_count_kv"]
    2
"""

from __future__ import annotations

import json
import warnings
from typing import Any

__all__ = ["hyperparameters", "add_metadata", "vocabulary"]


def hyperparameters(config: Any) -> dict[str, Any]:
    """The architecture keys (setter name -> value) of a transformers GPT-2 or Llama config.

    Example:
        >>> from transformers import GPT2Config
        >>> hyperparameters(GPT2Config(n_embd=64, n_layer=1, n_head=2))["feed_forward_length"]
        256
    """
    if config.model_type == "gpt2":
        return {
            "context_length": config.n_positions,
            "embedding_length": config.n_embd,
            "feed_forward_length": config.n_inner or 4 * config.n_embd,
            "block_count": config.n_layer,
            "head_count": config.n_head,
            "layer_norm_eps": config.layer_norm_epsilon,
            "vocab_size": config.vocab_size,  # llama.cpp's row count when there is no tokenizer (no_vocab)
        }
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    keys = {
        "context_length": config.max_position_embeddings,
        "embedding_length": config.hidden_size,
        "feed_forward_length": config.intermediate_size,
        "block_count": config.num_hidden_layers,
        "head_count": heads,
        "head_count_kv": getattr(config, "num_key_value_heads", None) or heads,
        "layer_norm_rms_eps": config.rms_norm_eps,
        "rope_dimension_count": head_dim,
        "vocab_size": config.vocab_size,
    }
    theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    keys["rope_freq_base"] = float(theta or 10000.0)
    if head_dim * heads != config.hidden_size:
        keys["key_length"] = keys["value_length"] = head_dim
    return keys


def vocabulary(tokenizer: Any, vocab_size: int) -> dict[str, Any] | None:
    """Tokens, types and merges of a byte-level BPE tokenizer padded to `vocab_size`; None for other kinds.

    Example:
        >>> vocabulary(None, 8) is None
        True
    """
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or not byte_level:
        return None
    by_id = {i: t for t, i in model["vocab"].items()}
    special = {a["id"]: a["content"] for a in spec.get("added_tokens") or []}
    by_id.update(special)
    if max(by_id, default=-1) >= vocab_size:
        return None  # the tokenizer has ids the model has no row for: not this model's tokenizer
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    ids = {key: getattr(tokenizer, f"{key}_token_id", None) for key in ("bos", "eos", "unk", "pad")}
    return {"tokens": tokens, "types": types, "merges": merges, "ids": ids}


def add_metadata(writer: Any, model: Any, tokenizer: Any, arch: str, file_type: int) -> str:
    """Write the architecture, file type and tokenizer keys; returns the tokenizer kind written.

    Example:
        >>> import gguf, tempfile, os
        >>> from quantpilot.testing import tiny_causal_lm
        >>> w = gguf.GGUFWriter(os.path.join(tempfile.mkdtemp(), "m.gguf"), "llama")
        >>> add_metadata(w, tiny_causal_lm("llama"), None, "llama", 2)
        'no_vocab'
    """
    config = model.config
    writer.add_name(getattr(config, "_name_or_path", "") or f"quantpilot {arch}")
    writer.add_file_type(file_type)
    for key, value in hyperparameters(config).items():
        getattr(writer, f"add_{key}")(value)
    vocab = vocabulary(tokenizer, config.vocab_size)
    if vocab is None:
        if tokenizer is not None:
            warnings.warn(
                "the GGUF gets no tokenizer (llama.cpp 'no_vocab': it runs on token ids): only byte-level BPE "
                "tokenizers (GPT-2, Llama 3 style tokenizer.json) are written",
                stacklevel=3,
            )
        writer.add_tokenizer_model("no_vocab")
        return "no_vocab"
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2" if arch == "gpt2" else "default")
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for key, token_id in vocab["ids"].items():
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id")(token_id)
    writer.add_add_bos_token(False)  # quantpilot's perplexity (and GPT-2's) does not prepend a BOS
    return "gpt2"
