"""An architecture zoo: tiny random-weight models of the families transformers ships.

Every family is built from its transformers config (hidden 64, 2 layers, 2-4 heads, vocabulary 128,
widths multiples of 64 where the architecture allows) with transformers' own initialisation, which
leaves weights at a scale where quantization error shows. Nothing is downloaded.

`FAMILIES[name]` is a `Family`: `build()` gives a fresh model in eval mode (seeded: two calls give
equal weights), `inputs(seed, second=False)` a batch of keyword arguments (token ids, pixel values,
`decoder_input_ids` for encoder-decoders); `second=True` gives another shape (batch and sequence
length differ) for checking exported graphs. A family this transformers version lacks has `skip` set
to the reason and no builder.

Example:
    >>> fam = FAMILIES["llama"]
    >>> fam.kind, sorted(fam.inputs(0))
    ('decoder', ['attention_mask', 'input_ids'])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["FAMILIES", "Family", "output_tensor"]

VOCAB = 128
HIDDEN = 64
FFN = 128
LAYERS = 2
IMAGE = 32

# Token ids the models' special tokens use stay out of the batches.
_SPECIAL = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


@dataclass(frozen=True)
class Family:
    """One architecture: how to build it, what it eats, and what kind of model it is."""

    name: str
    kind: str  # "decoder", "encoder", "encoder-decoder" or "vision"
    make: Callable[[], nn.Module] | None
    skip: str | None = None

    def build(self, seed: int = 0) -> nn.Module:
        if self.make is None:
            raise ValueError(f"{self.name}: {self.skip}")
        torch.manual_seed(seed)
        return self.make().eval()

    def inputs(self, seed: int, second: bool = False) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 + seed)
        if self.kind == "vision":
            batch = 3 if second else 4
            return {"pixel_values": torch.randn(batch, 3, IMAGE, IMAGE, generator=g)}
        batch, length = (3, 9) if second else (8, 32)
        ids = torch.randint(3, VOCAB, (batch, length), generator=g)
        if self.kind == "encoder-decoder":
            dec_length = 5 if second else 10
            return {"input_ids": ids, "decoder_input_ids": torch.randint(3, VOCAB, (batch, dec_length), generator=g)}
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def output_tensor(out: Any) -> torch.Tensor:
    """The main output of a transformers model call: logits, else the last hidden state."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state", "pooler_output"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"no tensor output in {type(out).__name__}")


def _text(hidden: int = HIDDEN, heads: int = 4, **extra: Any) -> dict[str, Any]:
    return dict(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=LAYERS,
        num_attention_heads=heads,
        intermediate_size=FFN,
        max_position_embeddings=64,
        **extra,
    )


def _llama_like(**extra: Any) -> dict[str, Any]:
    return _text(num_key_value_heads=2, use_cache=False, **_SPECIAL, **extra)


# name -> (kind, config class name, model class name, config kwargs)
_SPECS: dict[str, tuple[str, str, str, Callable[[], dict[str, Any]]]] = {
    "bert": ("encoder", "BertConfig", "BertModel", lambda: _text()),
    "roberta": ("encoder", "RobertaConfig", "RobertaModel", lambda: _text(pad_token_id=1)),
    "distilbert": (
        "encoder",
        "DistilBertConfig",
        "DistilBertModel",
        lambda: dict(
            vocab_size=VOCAB, dim=HIDDEN, hidden_dim=FFN, n_layers=LAYERS, n_heads=4, max_position_embeddings=64
        ),
    ),
    "deberta-v2": ("encoder", "DebertaV2Config", "DebertaV2Model", lambda: _text(max_relative_positions=32)),
    "modernbert": (
        "encoder",
        "ModernBertConfig",
        "ModernBertModel",
        lambda: _text(
            pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, local_attention=16
        ),
    ),
    "gpt2": (
        "decoder",
        "GPT2Config",
        "GPT2LMHeadModel",
        lambda: dict(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64, use_cache=False, **_SPECIAL
        ),
    ),
    "gpt-neox": ("decoder", "GPTNeoXConfig", "GPTNeoXForCausalLM", lambda: _text(use_cache=False, **_SPECIAL)),
    "opt": (
        "decoder",
        "OPTConfig",
        "OPTForCausalLM",
        lambda: dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            ffn_dim=FFN,
            word_embed_proj_dim=HIDDEN,
            max_position_embeddings=64,
            use_cache=False,
            **_SPECIAL,
        ),
    ),
    "bloom": (
        "decoder",
        "BloomConfig",
        "BloomForCausalLM",
        lambda: dict(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=4, use_cache=False, **_SPECIAL),
    ),
    "falcon": (
        "decoder",
        "FalconConfig",
        "FalconForCausalLM",
        lambda: dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            max_position_embeddings=64,
            use_cache=False,
            **_SPECIAL,
        ),
    ),
    "llama": ("decoder", "LlamaConfig", "LlamaForCausalLM", lambda: _llama_like()),
    "mistral": ("decoder", "MistralConfig", "MistralForCausalLM", lambda: _llama_like(sliding_window=None)),
    "qwen2": ("decoder", "Qwen2Config", "Qwen2ForCausalLM", lambda: _llama_like()),
    "qwen3": ("decoder", "Qwen3Config", "Qwen3ForCausalLM", lambda: _llama_like(head_dim=16)),
    "phi3": ("decoder", "Phi3Config", "Phi3ForCausalLM", lambda: _llama_like()),
    "gemma": ("decoder", "GemmaConfig", "GemmaForCausalLM", lambda: _llama_like(head_dim=16)),
    "gemma2": ("decoder", "Gemma2Config", "Gemma2ForCausalLM", lambda: _llama_like(head_dim=16, sliding_window=16)),
    "gemma3-text": (
        "decoder",
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        lambda: _llama_like(head_dim=16, sliding_window=16),
    ),
    "mixtral": (
        "decoder",
        "MixtralConfig",
        "MixtralForCausalLM",
        lambda: _llama_like(num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
    ),
    # More mixture-of-experts layouts: a shared expert beside the routed ones (Qwen2-MoE), q/k norms (Qwen3-MoE, OLMoE).
    "qwen2-moe": (
        "decoder",
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        lambda: _llama_like(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=64
        ),
    ),
    "qwen3-moe": (
        "decoder",
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        lambda: _llama_like(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64),
    ),
    "olmoe": ("decoder", "OlmoeConfig", "OlmoeForCausalLM", lambda: _llama_like(num_experts=4, num_experts_per_tok=2)),
    "t5": (
        "encoder-decoder",
        "T5Config",
        "T5Model",
        lambda: dict(
            vocab_size=VOCAB,
            d_model=HIDDEN,
            d_kv=16,
            d_ff=FFN,
            num_layers=LAYERS,
            num_heads=4,
            decoder_start_token_id=0,
            use_cache=False,
            **_SPECIAL,
        ),
    ),
    "bart": (
        "encoder-decoder",
        "BartConfig",
        "BartModel",
        lambda: dict(
            vocab_size=VOCAB,
            d_model=HIDDEN,
            encoder_layers=LAYERS,
            decoder_layers=LAYERS,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=FFN,
            decoder_ffn_dim=FFN,
            max_position_embeddings=64,
            use_cache=False,
            **_SPECIAL,
        ),
    ),
    "vit": (
        "vision",
        "ViTConfig",
        "ViTModel",
        lambda: dict(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            intermediate_size=FFN,
            image_size=IMAGE,
            patch_size=8,
        ),
    ),
    "deit": (
        "vision",
        "DeiTConfig",
        "DeiTModel",
        lambda: dict(
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            intermediate_size=FFN,
            image_size=IMAGE,
            patch_size=8,
        ),
    ),
    "convnext": (
        "vision",
        "ConvNextConfig",
        "ConvNextForImageClassification",
        lambda: dict(num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], image_size=IMAGE, num_labels=10),
    ),
    "resnet": (
        "vision",
        "ResNetConfig",
        "ResNetForImageClassification",
        lambda: dict(embedding_size=32, hidden_sizes=[64, 64], depths=[1, 1], layer_type="basic", num_labels=10),
    ),
    "mobilenet_v2": (
        "vision",
        "MobileNetV2Config",
        "MobileNetV2ForImageClassification",
        lambda: dict(depth_multiplier=0.35, image_size=IMAGE, num_labels=10),
    ),
}


def _family(name: str, kind: str, config_name: str, model_name: str, kwargs: Callable[[], dict[str, Any]]) -> Family:
    import transformers

    config_cls = getattr(transformers, config_name, None)
    model_cls = getattr(transformers, model_name, None)
    if config_cls is None or model_cls is None:
        missing = config_name if config_cls is None else model_name
        return Family(name, kind, None, skip=f"transformers {transformers.__version__} has no {missing}")

    def make() -> nn.Module:
        model = model_cls(config_cls(**kwargs()))
        if name == "mobilenet_v2":
            # transformers' init (std 0.02 convolutions) shrinks the signal to ~1e-26 through 17 blocks:
            # He init keeps activations, and so quantization error, measurable.
            for module in model.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        return model

    return Family(name, kind, make)


FAMILIES: dict[str, Family] = {name: _family(name, *spec) for name, spec in _SPECS.items()}
