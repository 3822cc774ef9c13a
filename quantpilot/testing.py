"""Small random models for tests and examples (needs the `hf` extra: transformers).

Example:
    >>> import torch
    >>> tiny_causal_lm("gpt2")(input_ids=torch.zeros(1, 4, dtype=torch.long)).logits.shape
    torch.Size([1, 4, 512])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["tiny_causal_lm"]


def tiny_causal_lm(kind: str = "gpt2", seed: int = 0) -> nn.Module:
    """A tiny random causal LM (vocab 512, width 128, 2 blocks) from a transformers config, for tests.

    Widths are multiples of 128 so per-group (g128) quantization applies.

    Args:
        kind: "gpt2" (GPT-2 blocks, transformers Conv1D layers, head tied to the token table) or
            "llama" (RMSNorm, gated MLP, untied head).
        seed: weights seed.

    Example:
        >>> m = tiny_causal_lm("llama")
        >>> m(input_ids=torch.zeros(1, 5, dtype=torch.long)).logits.shape
        torch.Size([1, 5, 512])
    """
    try:
        from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise ImportError("tiny_causal_lm builds transformers models: pip install 'quantpilot[hf]'") from None

    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=512,
            n_embd=128,
            n_layer=2,
            n_head=2,
            n_positions=128,
            bos_token_id=0,
            eos_token_id=0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model = GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = LlamaConfig(
            vocab_size=512,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"kind must be 'gpt2' or 'llama', got {kind!r}")
    return model.eval()
