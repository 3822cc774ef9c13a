"""One decoder block quantized by the recipe, on the inputs the already quantized prefix gives it.

The block is placed in a *shell*: a module tree holding it at its qualified name in the full model
(`model.layers.7`), so the recipe's `fnmatch` patterns, the saved layer names and the checksums are
the full model's, and the existing pipeline pieces run unchanged on it:

- no data-fitted step (RTN, `w8a16`, `w4a16-g128`): `install_layers` + `freeze`, as `quantize` does;
- GPTQ: the in-memory implementation's own per-block functions (`block_hessians`,
  `gptq_block_layers`), Hessians optionally summed across processes first; the block's next inputs
  are its outputs with the GPTQ layers quantized (the paper's sequential scheme, as `gptq_blocks`);
- AWQ: `awq_fold_scales` on the shell, then round-to-nearest; the next inputs are the *float*
  block's outputs, because the in-memory AWQ (like the reference) takes every block's statistics
  from one float pass.

Example:
    >>> import torch
    >>> block = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> [n for n, _ in shell(block, "model.layers.3").named_modules()][-1]
    'model.layers.3.0'
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..algorithms.gptq_sequential import block_hessians, dequantized_once, gptq_block_layers, spec_group
from ..api import RECIPE_ATTR, freeze
from ..install import install_layers, plan_layers
from ..recipe import Recipe
from ..steps import AWQ, GPTQ, QuantizeEmbeddings

__all__ = ["shell", "as_kwargs", "quantize_block", "BlockResult", "check_streamable"]

# One block call: keyword arguments only (the hidden states under the block's own parameter name).
Call = dict[str, Any]
BlockResult = tuple[nn.Module, dict[str, Any], list[Call]]


class _Shell(nn.Module):
    """Holds a block at its qualified name; calling the shell calls the block (keywords only)."""

    def __init__(self, block: nn.Module, path: str) -> None:
        super().__init__()
        parent: nn.Module = self
        *parents, leaf = path.split(".")
        for part in parents:
            child = nn.Module()
            parent.add_module(part, child)
            parent = child
        parent.add_module(leaf, block)
        self.__dict__["block"] = block  # not a second registration: the block's names stay the full model's

    def forward(self, **kwargs: Any) -> Any:
        return self.__dict__["block"](**kwargs)


def shell(block: nn.Module, path: str) -> nn.Module:
    """A module whose `named_modules` give `block`'s layers their full-model names (`path` + `.` + name).

    Example:
        >>> s = shell(torch.nn.Linear(2, 2), "h.0"); s(input=torch.ones(1, 2)).shape
        torch.Size([1, 2])
    """
    return _Shell(block, path)


def as_kwargs(block: nn.Module, args: tuple, kwargs: dict) -> Call:
    """A captured block call `(args, kwargs)` as keyword arguments only (positionals named by the signature).

    Example:
        >>> as_kwargs(torch.nn.Linear(2, 2), (torch.ones(1, 2),), {})["input"].shape
        torch.Size([1, 2])
    """
    if not args:
        return dict(kwargs)
    bound = inspect.signature(block.forward).bind_partial(*args)
    return {**bound.arguments, **kwargs}


def hidden_key(block: nn.Module) -> str:
    """The name of the block's first parameter: where the hidden states go.

    Example:
        >>> hidden_key(torch.nn.Linear(2, 2))
        'input'
    """
    return next(iter(inspect.signature(block.forward).parameters))


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _outputs(block: nn.Module, calls: list[Call]) -> list[Call]:
    key = hidden_key(block)
    with torch.no_grad():
        return [{**call, key: _hidden(block(**call))} for call in calls]


def check_streamable(recipe: Recipe) -> None:
    """Refuse recipes a block-by-block run cannot reproduce: static activation ranges, steps other than GPTQ/AWQ
    (one of them at most) and `QuantizeEmbeddings` (the token table, quantized with the parts outside the blocks).

    Example:
        >>> import quantpilot as qp
        >>> check_streamable(qp.Recipe.preset("int8-static"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: streamed quantization runs weight-only or dynamic recipes ...
    """
    static = recipe.activations is not None and not recipe.dynamic
    others = [s.name for s in recipe.steps if not isinstance(s, GPTQ | AWQ | QuantizeEmbeddings)]
    if static or others or len([s for s in recipe.steps if isinstance(s, GPTQ | AWQ)]) > 1:
        raise ValueError(
            "streamed quantization runs weight-only or dynamic recipes with at most one GPTQ or AWQ step "
            "(and quantize_embeddings) "
            f"(got activations={'static' if static else 'none/dynamic'}, steps={[s.name for s in recipe.steps]}); "
            "use rtn-w4-g128, gptq-w4-g128, awq-w4-g128, w8a16, w4a16-g128 or int8-dynamic"
        )


def block_step(recipe: Recipe) -> GPTQ | AWQ | None:
    """The recipe's step that runs block by block (GPTQ or AWQ), if any.

    Example:
        >>> import quantpilot as qp
        >>> block_step(qp.Recipe.preset("gptq-w4-g128")).name, block_step(qp.Recipe.preset("w8a16"))
        ('gptq', None)
    """
    return next((s for s in recipe.steps if isinstance(s, GPTQ | AWQ)), None)


def quantize_block(
    block: nn.Module,
    path: str,
    recipe: Recipe,
    calls: list[Call],
    *,
    merge_hessians: Callable[[dict[str, Any]], None] | None = None,
) -> BlockResult:
    """Quantize one float block in place by the recipe: `(the frozen shell, what the steps chose, next inputs)`.

    Args:
        block: the float block (its weights loaded); changed in place.
        path: its qualified name in the full model (`model.layers.3`).
        recipe: a recipe `check_streamable` accepts.
        calls: its calibration inputs (keywords), empty for recipes without a data-fitted step.
        merge_hessians: called on the GPTQ accumulators before they are solved (summing across processes).

    Example:
        >>> import quantpilot as qp
        >>> frozen, _, _ = quantize_block(torch.nn.Sequential(torch.nn.Linear(64, 8)), "h.0",
        ...                               qp.Recipe.preset("w8a16"), [])
        >>> type(frozen.get_submodule("h.0.0")).__name__
        'QuantLinear'
    """
    step = block_step(recipe)
    model = shell(block, path)
    choices: dict[str, Any] = {}
    next_calls: list[Call] = []
    with torch.no_grad():
        if isinstance(step, GPTQ):
            next_calls = _gptq(model, block, path, recipe, step, calls, merge_hessians)
        elif isinstance(step, AWQ):
            next_calls = _outputs(block, calls)  # the float block's outputs, before any fold
            choices = _awq(model, path, recipe, step, calls)
        model = install_layers(model, recipe)
        setattr(model, RECIPE_ATTR, recipe)
        model = freeze(model)
    return model, choices, next_calls


def _linear_targets(model: nn.Module, recipe: Recipe) -> list[str]:
    plan, _ = plan_layers(model, recipe)
    return [name for name, _, entry, layer, _ in plan if entry.name in ("Linear", "Conv1D") and layer.weights]


def _gptq(model, block, path, recipe, step, calls, merge_hessians) -> list[Call]:
    from ..algorithms.rtn import linear_weight

    prefix = f"{path}."
    widths = {n[len(prefix) :]: linear_weight(model.get_submodule(n)).shape[1] for n in _linear_targets(model, recipe)}
    group = spec_group(recipe.weights)
    if group is not None:
        bad = [f"{prefix}{n} (in_features={k})" for n, k in widths.items() if k % group]
        if bad:
            raise ValueError(f"group_size={group} does not divide the input width of {bad[:3]}")
    key = hidden_key(block)
    accumulators = block_hessians(block, widths, [((), call) for call in calls])
    if merge_hessians is not None:
        merge_hessians(accumulators)
    tokens = min((a.tokens for a in accumulators.values()), default=0)
    need = max(widths.values(), default=0)
    if tokens < need:
        raise ValueError(
            f"GPTQ needs at least {need} calibration tokens (the widest layer's in_features); got {tokens}: "
            "pass more calibration samples or longer sequences"
        )
    gptq_block_layers(
        block,
        accumulators,
        recipe.weights,
        block_size=step.block_size,
        damp=step.damp,
        act_order=step.act_order,
        scale_dtype=getattr(torch, recipe.scale_dtype),
    )
    with dequantized_once(block, list(accumulators)):  # the same replay as the in-memory gptq_blocks
        return [{**call, key: _hidden(block(**call))} for call in calls]


def _awq(model, path, recipe, step, calls) -> dict[str, Any]:
    from ..algorithms.awq import awq_fold_scales

    pairs = step.pairs
    if pairs is not None:  # explicit pairs name layers of every block: keep this block's
        pairs = tuple(p for p in pairs if (p["prev"] if isinstance(p, dict) else p[0]).startswith(f"{path}."))
    spec = recipe.weights
    folded = awq_fold_scales(
        model,
        calls,
        spec.dtype.bits,
        spec_group(spec),
        pairs=pairs or None,
        clip=step.clip,
        skip=recipe.skip,
        search_tokens=step.search_tokens,
        seed=step.seed,
        inplace=True,
    )
    return {"awq": folded.__dict__.pop("quantpilot_awq", None)}
