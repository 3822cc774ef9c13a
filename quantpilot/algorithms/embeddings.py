"""Weight-only quantization of embedding tables (and of an output head tied to one), stored packed.

The LLM weight methods (RTN, AWQ, GPTQ) quantize the Linear layers and keep the token table in
float, as the papers do; in a 7B model that table is ~2 % of the weights. In a small model it is
not (8192 x 256 is 40 % of the testbed GPT-2), so the checkpoint only shrinks ~2x unless the table
is quantized too. `quantize_embeddings` does that with the same round-to-nearest grid as `rtn`,
one scale and zero point per token row or per group of `group_size` features, and can be applied
to a float model or after any weight method. A head tied to the table (GPT-2's `lm_head`) becomes
a `WeightOnlyLinear` reading the same codes: one copy in memory and in the saved file, and the
logits use the same quantized table as the lookup, as the tie intends.

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Embedding(100, 64), torch.nn.Linear(64, 100, bias=False))
    >>> net[1].weight = net[0].weight  # a tied head
    >>> q = qp.algorithms.quantize_embeddings(net, bits=4, group_size=32)
    >>> type(q[0]).__name__, type(q[1]).__name__, q[1].weight_packed is q[0].weight_packed
    ('WeightOnlyEmbedding', 'WeightOnlyLinear', True)
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn

from ..api import RECIPE_ATTR
from ..nn.packed import WeightOnlyEmbedding, WeightOnlyLinear, weight_only_spec
from ..recipe import Recipe
from .rtn import _is_conv1d, quantize_weight
from .superblock_scales import quantize_on_superblock_grid

__all__ = ["quantize_embeddings", "pack_embeddings"]


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _tied_heads(model: nn.Module, weight: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Linear / Conv1D layers whose weight is this very tensor (a head tied to the table)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if (isinstance(m, nn.Linear) or _is_conv1d(m)) and getattr(m, "weight", None) is weight
    ]


def _scheme_name(bits: int, group_size: int | None, superblock: int | None = None) -> str:
    grid = "" if superblock is None else f"-sb{superblock}"
    return f"w{bits}-" + ("per-row" if group_size is None else f"g{group_size}") + grid


def _targets(model: nn.Module, layers: Sequence[str], skip: Sequence[str]) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Embedding)
        and any(fnmatch(name, p) for p in layers)
        and not any(fnmatch(name, p) for p in skip)
    ]


def _check_targets(targets: list[tuple[str, nn.Module]], layers, skip, group_size: int | None) -> None:
    if not targets:
        raise ValueError(
            f"no nn.Embedding matches layers={tuple(layers)} minus skip={tuple(skip)}; quantized tables "
            "(WeightOnlyEmbedding) are not quantized twice"
        )
    for name, m in targets:
        if m.max_norm is not None:
            raise ValueError(f"{name} has max_norm, which renormalises its rows in place; skip it")
        if group_size is not None and m.embedding_dim % group_size:
            raise ValueError(
                f"group_size={group_size} does not divide {name}'s embedding_dim={m.embedding_dim}; choose a "
                "group size that divides it, group_size=None (one scale per row), or skip it"
            )


def _packed_table(
    table: nn.Embedding, spec: Any, scale_dtype: torch.dtype, superblock: int | None
) -> WeightOnlyEmbedding:
    if table.weight.is_meta:  # a skeleton `quantpilot.load` fills from the file: the layout, not the codes
        rows, cols = table.weight.shape
        return WeightOnlyEmbedding(rows, cols, spec, table.padding_idx, scale_dtype)
    if superblock is None:
        codes, scale, zero_point = quantize_weight(table.weight, spec, scale_dtype)
    else:
        codes, scale, zero_point = quantize_on_superblock_grid(table.weight, spec, superblock)
    return WeightOnlyEmbedding.from_codes(codes, scale, zero_point, spec, table.padding_idx, scale_dtype)


def pack_embeddings(
    model: nn.Module,
    bits: int,
    group_size: int | None,
    layers: Sequence[str] = ("*",),
    skip: Sequence[str] = (),
    scale_dtype: torch.dtype | str = torch.float16,
    superblock: int | None = None,
) -> nn.Module:
    """Replace the matching `nn.Embedding` tables of `model` (in place) by packed `WeightOnlyEmbedding`s.

    The `QuantizeEmbeddings` recipe step runs this; a head tied to a table becomes a `WeightOnlyLinear`
    reading the same codes. With `superblock`, codes are symmetric and the group scales lie on the
    per-superblock grid of `superblock_scales` (llama.cpp's Q6_K: bits=6, group_size=16, superblock=256).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Embedding(10, 8))
        >>> type(pack_embeddings(net, 8, None)[0]).__name__
        'WeightOnlyEmbedding'
    """
    scale_dtype = getattr(torch, scale_dtype) if isinstance(scale_dtype, str) else scale_dtype
    spec = weight_only_spec(bits, group_size, symmetric=superblock is not None)
    targets = _targets(model, layers, skip)
    _check_targets(targets, layers, skip, group_size)
    for name, _ in targets:
        table = model.get_submodule(name)
        packed = _packed_table(table, spec, scale_dtype, superblock)
        packed.output_dtype = table.weight.dtype
        for head_name, head in _tied_heads(model, table.weight):
            tied = WeightOnlyLinear.tied_head(packed, name, getattr(head, "bias", None))
            tied.train(head.training)
            _set_child(model, head_name, tied)
        packed.train(table.training)
        _set_child(model, name, packed)
    return model


def quantize_embeddings(
    model: nn.Module,
    bits: int = 4,
    group_size: int | None = 128,
    *,
    layers: Sequence[str] = ("*",),
    skip: Sequence[str] = (),
    scale_dtype: torch.dtype = torch.float16,
    superblock: int | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Store the model's `nn.Embedding` tables as packed int4 / int6 / int8 codes (and tied heads with them).

    A thin wrapper over the `QuantizeEmbeddings` recipe step: on a float model it runs `quantize` +
    `freeze` with a recipe holding only that step; on a model a weight method already quantized it
    applies the step and appends it to the model's recipe (`qp.recipe_of`), which then rebuilds both.

    Args:
        model: a float model, or one a weight method (`rtn`, `awq`, `gptq`) already quantized.
        bits: 4 (two codes per byte), 6 or 8 (one code per byte).
        group_size: features per scale along the embedding dimension (128 default), or None for
            one scale per token row.
        layers, skip: fnmatch patterns of embedding names to include / leave in float.
        scale_dtype: torch.float16 (default) or torch.bfloat16 for scales and zero points.
        superblock: None (default), or columns sharing one fp16 step of which every group scale is a
            multiple (1..127), with symmetric codes: llama.cpp's k-quant layout. `bits=6, group_size=16,
            superblock=256` is Q6_K, which `export_llm(format="gguf")` then writes without requantizing
            (llama.cpp's own 4-bit files keep the token table at Q6_K). Needs float16 scales.
        inplace: change `model` itself instead of a copy.

    Returns:
        The model with `WeightOnlyEmbedding` tables; `quantpilot.save` / `load` round-trip it.

    Raises:
        TypeError: `model` is not an `nn.Module`.
        ValueError: no embedding matches, the group size does not divide a table's width, or a
            table has `max_norm` (renormalised in place, which codes cannot be).

    Example:
        >>> import torch, quantpilot as qp
        >>> table = torch.nn.Sequential(torch.nn.Embedding(10, 8))
        >>> qp.algorithms.quantize_embeddings(table, bits=8, group_size=None)[0].weight_packed.shape
        torch.Size([10, 8])
    """
    from ..api import freeze, quantize
    from ..steps import QuantizeEmbeddings

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(layers, str) or isinstance(skip, str):
        raise TypeError("layers and skip are sequences of patterns, e.g. ('*',) and ('wpe',), not one string")
    weight_only_spec(bits, group_size)
    _check_targets(_targets(model, layers, skip), layers, skip, group_size)
    dtype_name = str(scale_dtype).removeprefix("torch.")
    step = QuantizeEmbeddings(bits, group_size, tuple(layers), tuple(skip), dtype_name, superblock)
    recipe = getattr(model, RECIPE_ATTR, None)
    if recipe is None:
        name = f"embeddings-{_scheme_name(bits, group_size, superblock)}"
        recipe = Recipe(weights=None, activations=None, steps=(step,), name=name)
        return freeze(quantize(model, recipe, inplace=inplace))
    target = model if inplace else copy.deepcopy(model)
    target = step.prepare(target, recipe)
    name = f"{recipe.name}+emb-{_scheme_name(bits, group_size, superblock)}"
    setattr(target, RECIPE_ATTR, dataclasses.replace(recipe, steps=(*recipe.steps, step), name=name))
    return target
