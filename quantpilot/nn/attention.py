"""Quantization points on the attention matmuls (Q·Kᵀ and P·V) of Hugging Face transformers models.

In transformers 5 every attention module calls `ALL_ATTENTION_FUNCTIONS.get_interface(
config._attn_implementation, ...)(module, query, key, value, attention_mask, scaling=..., ...)`.
quantpilot registers its own implementation under the name "quantpilot": the same eager math with a
`TensorQuantizer` on each matmul input (query, key, softmax output, value), looked up on the calling
module. So one registration covers BERT, RoBERTa, GPT-2, Llama and every other model written
against that interface, with no copy of their source. Why not graph capture: `torch.fx` cannot
trace HF models, and a `torch.export` graph would replace the user's module (its methods, its
`generate`) by a flat graph. LayerNorm and softmax stay in float; so does everything a module
without quantizers computes (those run plain eager attention).

Example:
    >>> import torch
    >>> from quantpilot import QuantSpec
    >>> q = AttentionQuantizers(QuantSpec("int8"), dynamic=True)
    >>> [name for name, _ in q.named_children()]
    ['query', 'key', 'probs', 'value']
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ..spec import QuantSpec
from .tensor_quantizer import CalibratorConfig, TensorQuantizer

__all__ = [
    "AttentionQuantizers",
    "ATTENTION_IMPLEMENTATION",
    "ATTRIBUTE",
    "is_attention_module",
    "quantized_attention",
    "use_quantized_attention",
]

ATTENTION_IMPLEMENTATION = "quantpilot"
ATTRIBUTE = "quantpilot_matmul"  # the child module holding an attention module's quantizers


class AttentionQuantizers(nn.Module):
    """The four inputs of the two attention matmuls: `softmax(Q·Kᵀ) → P`, then `P·V`.

    Args:
        spec: activation scheme of the four points.
        dynamic: per-batch ranges instead of calibrated ones.
        calibrator: how static ranges are picked.

    Example:
        >>> from quantpilot import QuantSpec
        >>> AttentionQuantizers(QuantSpec("int8")).probs.needs_calibration
        True
    """

    def __init__(self, spec: QuantSpec, dynamic: bool = False, calibrator: CalibratorConfig | None = None) -> None:
        super().__init__()
        for role in ("query", "key", "probs", "value"):
            setattr(self, role, TensorQuantizer(spec, dynamic=dynamic, calibrator=calibrator))


_SOURCE_CACHE: dict[type, bool] = {}


def is_attention_module(module: nn.Module) -> bool:
    """True for a module whose forward dispatches through transformers' attention interface.

    Example:
        >>> import torch
        >>> is_attention_module(torch.nn.Linear(2, 2))
        False
    """
    cls = type(module)
    if cls not in _SOURCE_CACHE:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = ""
        _SOURCE_CACHE[cls] = "ALL_ATTENTION_FUNCTIONS" in source and hasattr(module, "config")
    return _SOURCE_CACHE[cls]


def _repeat_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    # Grouped-query attention: each key/value head serves `heads / x.shape[1]` query heads.
    if x.shape[1] == heads:
        return x
    if heads % x.shape[1]:
        raise ValueError(f"{heads} query heads cannot share {x.shape[1]} key/value heads evenly")
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def quantized_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with quantized matmul inputs; the "quantpilot" attention implementation.

    Shapes follow transformers: query `(batch, heads, q_len, head_dim)`, key/value
    `(batch, kv_heads, k_len, head_dim)`, an additive float mask; returns the output as
    `(batch, q_len, heads, head_dim)` and the attention probabilities.

    Example:
        >>> import torch
        >>> q = k = v = torch.randn(1, 2, 3, 4)
        >>> out, probs = quantized_attention(torch.nn.Module(), q, k, v, None)
        >>> out.shape, probs.shape
        (torch.Size([1, 3, 2, 4]), torch.Size([1, 2, 3, 3]))
    """
    if kwargs.get("s_aux") is not None:
        raise ValueError("attention sinks (s_aux) are not supported by quantpilot's attention; skip this layer")
    quantizers = getattr(module, ATTRIBUTE, None)
    point = (lambda role, x: getattr(quantizers, role)(x)) if quantizers is not None else (lambda role, x: x)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    key = _repeat_heads(key, query.shape[1])
    value = _repeat_heads(value, query.shape[1])
    scores = torch.matmul(point("query", query), point("key", key).transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(point("probs", probs), point("value", value))
    return out.transpose(1, 2).contiguous(), probs


_REGISTERED = False


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, quantized_attention)
    # Our implementation takes the additive float mask the eager implementation takes.
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, eager_mask)
    _REGISTERED = True


def use_quantized_attention(model: nn.Module) -> None:
    """Make every attention module of a transformers `model` call quantpilot's attention.

    Example:
        >>> import torch
        >>> use_quantized_attention(torch.nn.Linear(2, 2))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: matmul quantization needs a Hugging Face transformers model ...
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        raise ValueError(
            "matmul quantization needs a Hugging Face transformers model (its config selects the attention "
            f"implementation); got {type(model).__name__}"
        )
    _register()
    configs = {id(config): config}
    for module in model.modules():
        sub = getattr(module, "config", None)
        if sub is not None and hasattr(sub, "_attn_implementation"):
            configs[id(sub)] = sub
    for cfg in configs.values():
        cfg._attn_implementation = ATTENTION_IMPLEMENTATION
