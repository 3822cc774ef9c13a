"""The Llama-family language-model testbed: its shape and how to build it untrained.

Same data and tokenizer recipe as the GPT-2 testbed (`language_model`: an 8192-token byte-level
BPE and WikiText-2 `valid.txt`), but a `LlamaForCausalLM`: RMSNorm, RoPE, SwiGLU, grouped-query
attention and a tied token table. It exists because the engines' own quantizers are built for this
family: compressed-tensors refuses GPT-2's Conv1D, NNCF's AWQ matches no GPT-2 layer, and llama.cpp's
k-quants need rows that are multiples of 256 (every weight here has 256- or 768-wide rows, so
Q4_K_M quantizes every tensor with its own k-quant types instead of falling back to q5_0/q8_0).
`language_model.train_testbed(arch="llama")` trains it, `load_testbed(arch="llama")` loads it.

Example:
    >>> model = build_llama(512, {**LLAMA_TESTBED_CONFIG, "n_layer": 1})
    >>> type(model).__name__, model.config.num_key_value_heads, model.config.tie_word_embeddings
    ('LlamaForCausalLM', 2, True)
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["LLAMA_TESTBED_CONFIG", "build_llama"]

# hidden 256 = 4 heads of 64 (2 KV heads: GQA), SwiGLU 768 = 3 x 256, 6 blocks, tied 8k table, 256-token
# context: 6.8 M parameters (2.1 M of them the table). Every row is a multiple of 256 (llama.cpp's k-quant
# super-block) and of 128 (W4 g128 groups tile every weight). Version 1 as cached: `OMP_NUM_THREADS=1 nice
# -n 19 python scripts/train_lm.py --arch llama` on 2 cores shared with other work, 0.8-1.4 s/step (2 threads
# stalled at 4.5 s/step), stopped by the wall-clock cap at step 1251 with the schedule annealed: final train
# loss 3.02, test perplexity 120.6 on 200 windows (the GPT-2 testbed: 191.4 after 369 steps).
LLAMA_TESTBED_CONFIG: dict[str, Any] = {
    "arch": "llama",
    "version": 1,
    "vocab_size": 8192,
    "hidden_size": 256,
    "intermediate_size": 768,
    "n_layer": 6,
    "n_head": 4,
    "n_kv_head": 2,
    "n_positions": 256,
    "rope_theta": 10000.0,
    "train_steps": 1500,
    "max_seconds": 1500,
    # Llama has no residual dropout; attention dropout and weight decay keep the small corpus from being memorised.
    "dropout": 0.1,
    "eval_windows": 200,
    "batch_size": 8,
    "seq_len": 256,
    "lr": 2e-3,
    "seed": 0,
}


def build_llama(vocab_size: int, cfg: dict[str, Any] | None = None) -> nn.Module:
    """An untrained `LlamaForCausalLM` of the testbed's shape with a `vocab_size`-token table.

    Args:
        vocab_size: rows of the (tied) token table: the tokenizer's length.
        cfg: the shape (default `LLAMA_TESTBED_CONFIG`).

    Example:
        >>> build_llama(300, {**LLAMA_TESTBED_CONFIG, "n_layer": 1}).config.hidden_size
        256
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LLAMA_TESTBED_CONFIG if cfg is None else cfg
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["n_layer"],
        num_attention_heads=cfg["n_head"],
        num_key_value_heads=cfg["n_kv_head"],
        max_position_embeddings=cfg["n_positions"],
        rope_theta=cfg["rope_theta"],
        attention_dropout=cfg["dropout"],
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    return LlamaForCausalLM(config)
