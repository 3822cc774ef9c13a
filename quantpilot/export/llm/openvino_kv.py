"""The KV-cache form of an OpenVINO causal-LM graph: explicit past/present tensors, then OpenVINO's stateful form.

`convert_with_cache` traces a transformers GPT-2 / Llama with the cache as plain tensors: inputs
`input_ids` and `past_key_values.{i}.key|value` (batch, kv heads, past length, head dim), outputs
`logits` and `present.{i}.key|value` (past + new tokens). In that form the graph is an ordinary
function, so NNCF's `compress_weights` (with a calibration dataset from `empty_cache`) and quantpilot's
weight replacement treat it like the full-sequence graph. `make_stateful` then turns each past/present
pair into an OpenVINO variable with openvino's own `apply_make_stateful_transformation` (the form
optimum-intel and openvino-genai run), and gives each variable a zero-length initial value sized by
`input_ids`' batch, so a fresh or `reset_state()` request starts with an empty cache. Positions come
from the cache length: one request scores a window in one call, or decodes one token per call.

Example (a trace takes seconds; `tests/export/llm/test_openvino_kv.py` runs whole graphs):
    >>> from quantpilot.testing import tiny_causal_lm
    >>> cache_layout(tiny_causal_lm("llama").config)  # (layers, kv heads, head dim)
    (2, 2, 64)
    >>> ir = make_stateful(convert_with_cache(tiny_causal_lm("llama")))  # doctest: +SKIP
    >>> [i.get_any_name() for i in ir.inputs], [o.get_any_name() for o in ir.outputs]  # doctest: +SKIP
    (['input_ids'], ['logits'])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["cache_layout", "convert_with_cache", "empty_cache", "make_stateful"]


def cache_layout(config: Any) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) of a transformers GPT-2 / Llama config (GPT-2 has one KV head per head).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> cache_layout(NS(num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, hidden_size=256))
        (6, 2, 64)
    """
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def _names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


class _CachedLogits(nn.Module):
    """(input_ids, *past keys/values) -> (logits, *present keys/values): the graph OpenVINO traces."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        # Filled directly: DynamicCache's own first update concatenates onto a 1-D empty tensor, which the
        # trace keeps as a rank-1 Concat input that OpenVINO refuses.
        for i, layer in enumerate(cache.layers):
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
            layer.device, layer.is_initialized = input_ids.device, True
        # An explicit all-ones mask (past + new) spares the trace transformers' packed-sequence check.
        mask = torch.ones(input_ids.shape[0], past[0].shape[2] + input_ids.shape[1], dtype=torch.long)
        out = self.model(input_ids=input_ids, attention_mask=mask, cache=cache, use_cache=True)
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def empty_cache(config: Any, batch: int = 1, length: int = 0) -> dict[str, np.ndarray]:
    """Zero past tensors for `convert_with_cache`'s inputs: `length` 0 is a fresh sequence (NNCF's datasets).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> past = empty_cache(NS(num_hidden_layers=1, num_attention_heads=4, hidden_size=256))
        >>> sorted(past), past["past_key_values.0.key"].shape
        (['past_key_values.0.key', 'past_key_values.0.value'], (1, 4, 0, 64))
    """
    layers, kv_heads, head_dim = cache_layout(config)
    return {n: np.zeros((batch, kv_heads, length, head_dim), np.float32) for n in _names(layers, "past_key_values")}


def convert_with_cache(model: nn.Module) -> Any:
    """`openvino.convert_model` of a float32 transformers GPT-2 / Llama (eval mode) with the KV cache as named tensors.

    Every dimension but heads and head size is dynamic (batch, new tokens, past length).

    Example:
        >>> callable(convert_with_cache)  # tiny models in tests/export/llm/test_openvino_kv.py
        True
    """
    import openvino as ov

    layers, kv_heads, head_dim = cache_layout(model.config)
    # Example: 3 new tokens after 5 cached, so no dimension is traced as the constant 0 or 1.
    example = torch.zeros(1, 3, dtype=torch.long)
    past = [torch.zeros(1, kv_heads, 5, head_dim) for _ in range(2 * layers)]
    shapes = [((-1, -1), ov.Type.i64)] + [((-1, kv_heads, -1, head_dim), ov.Type.f32)] * (2 * layers)
    with torch.no_grad():
        ir = ov.convert_model(_CachedLogits(model), example_input=(example, *past), input=shapes)
    for port, name in zip(ir.inputs, ["input_ids", *_names(layers, "past_key_values")], strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(ir.outputs, ["logits", *_names(layers, "present")], strict=True):
        port.get_tensor().set_names({name})
    return ir


def make_stateful(ir: Any) -> Any:
    """Turn `convert_with_cache`'s past/present pairs into OpenVINO state (in place); returns `ir`.

    Each variable starts as a zero-length cache with `input_ids`' batch size (OpenVINO's default initial
    value would have batch 0 too and fail at the first Concat).

    Example:
        >>> callable(make_stateful)  # tiny models in tests/export/llm/test_openvino_kv.py
        True
    """
    import openvino.opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    past = [p.get_any_name() for p in ir.inputs if p.get_any_name().startswith("past_key_values.")]
    if not past:
        raise ValueError("make_stateful takes convert_with_cache's graph (past_key_values.* inputs); none found")
    apply_make_stateful_transformation(ir, {name: "present" + name[len("past_key_values") :] for name in past})
    ids = ir.input("input_ids")
    batch = ops.gather(ops.shape_of(ids), ops.constant(np.array([0], np.int64)), ops.constant(np.int64(0)))
    for node in ir.get_ordered_ops():
        if node.get_type_name() != "ReadValue":
            continue
        rest = [0 if d.is_dynamic else d.get_length() for d in list(node.get_output_partial_shape(0))[1:]]
        shape = ops.concat([batch, ops.constant(np.array(rest, np.int64))], 0)
        zeros = ops.broadcast(ops.constant(np.zeros((), node.get_output_element_type(0).to_dtype())), shape)
        node.set_arguments([zeros])
    ir.validate_nodes_and_infer_types()
    return ir
