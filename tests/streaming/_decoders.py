"""Tiny random decoders of several families (2 blocks, widths fit W4 g128) for the streaming tests."""

import torch

FAMILIES = ("llama", "gpt2", "opt", "gpt_neox", "falcon", "phi3", "gemma", "qwen3", "mistral", "qwen2")


def tiny_config(kind: str):
    """A 2-block config of `kind`, widths multiples of 128 so W4 g128 applies (vocab 256)."""
    import transformers as T

    common = dict(vocab_size=256, hidden_size=128, num_hidden_layers=2, num_attention_heads=4)
    if kind == "gpt2":
        return T.GPT2Config(vocab_size=256, n_embd=128, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                            eos_token_id=0)  # fmt: skip
    if kind == "opt":
        return T.OPTConfig(ffn_dim=256, word_embed_proj_dim=128, max_position_embeddings=64, bos_token_id=0,
                           eos_token_id=0, pad_token_id=1, **common)  # fmt: skip
    if kind == "falcon":
        return T.FalconConfig(bos_token_id=0, eos_token_id=0, **common)
    if kind == "gemma":
        return T.GemmaConfig(intermediate_size=256, num_key_value_heads=1, head_dim=32, pad_token_id=0,
                             bos_token_id=1, eos_token_id=2, **common)  # fmt: skip
    classes = {"llama": T.LlamaConfig, "gpt_neox": T.GPTNeoXConfig, "phi3": T.Phi3Config,
               "qwen3": T.Qwen3Config, "mistral": T.MistralConfig, "qwen2": T.Qwen2Config}  # fmt: skip
    extra = {"num_key_value_heads": 2} if kind != "gpt_neox" else {}
    extra.update({"head_dim": 32} if kind == "qwen3" else {})
    return classes[kind](intermediate_size=256, bos_token_id=0, eos_token_id=0, pad_token_id=0, **extra, **common)


def tiny_model(kind: str, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(tiny_config(kind)).eval()


def calibration_ids(samples: int = 8, tokens: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (samples, tokens), generator=torch.Generator().manual_seed(0))
