"""GPTQ's sequential pass: find the repeated blocks, catch their inputs, quantize block after block.

Each block's Hessians come from the outputs of the blocks before it, already quantized (the paper's
sequential scheme). The per-layer solver, `gptq_quantize_weight`, lives in `quantpilot.algorithms.gptq`,
which re-exports everything public here.

Example:
    >>> from quantpilot.testing import tiny_causal_lm
    >>> find_blocks(tiny_causal_lm("llama"), ["model.layers.0.mlp.down_proj"])[0]
    'model.layers'
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..batches import eval_mode
from ..nn.packed import WeightOnlyLinear
from ..spec import PerGroup, QuantSpec
from ..surgery import inputs_of, observe, replace_module
from .rtn import linear_weight

__all__ = [
    "find_blocks",
    "gptq_targets",
    "gptq_blocks",
    "spec_group",
    "block_hessians",
    "gptq_block_layers",
    "dequantized_once",
]


def find_blocks(model: nn.Module, targets: Iterable[str]) -> tuple[str, nn.ModuleList] | None:
    """The `nn.ModuleList` of repeated blocks (transformer layers) holding the most target layers.

    Example:
        >>> from quantpilot.testing import tiny_causal_lm
        >>> find_blocks(tiny_causal_lm("gpt2"), ["transformer.h.0.attn.c_attn"])[0]
        'transformer.h'
    """
    targets = list(targets)
    best, best_count = None, 0
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) == 0:
            continue
        prefix = f"{name}." if name else ""
        count = sum(t.startswith(prefix) for t in targets)
        if count > best_count:
            best, best_count = (name, m), count
    return best


def _run(model: nn.Module, batch: Any) -> Any:
    # No KV cache: a cache object captured with the block inputs would grow on every replay.
    extra = {"use_cache": False} if getattr(model, "config", None) is not None else {}
    if isinstance(batch, dict):
        return model(**batch, **extra)
    if isinstance(batch, tuple | list):
        return model(*batch, **extra)
    return model(batch, **extra)


def _first_block_inputs(model: nn.Module, block: nn.Module, batches: Sequence[Any]) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) each calibration batch passes to the first block (the model stops there)."""
    return inputs_of(model, block, batches, run=_run)


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _with_hidden(inputs: tuple[tuple, dict], hidden: torch.Tensor) -> tuple[tuple, dict]:
    args, kwargs = inputs
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _tokens(batch: Any) -> int:
    if isinstance(batch, dict):
        ids = batch.get("input_ids")
        if isinstance(ids, torch.Tensor):
            return ids.numel()
        tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
        return tensors[0].shape[:-1].numel() if tensors else 0
    t = batch[0] if isinstance(batch, tuple | list) else batch
    return t.numel() if t.dtype in (torch.long, torch.int) else t.shape[:-1].numel()


def gptq_targets(
    model: nn.Module, names: list[str], batches: Sequence[Any], group_size: int | None, blocks: str | None
) -> tuple[str, nn.ModuleList, dict[str, int]]:
    """Check what GPTQ needs and find the repeated blocks: `(blocks name, the ModuleList, {layer: in_features})`.

    Raises:
        ValueError: naming what to change (too few tokens, a group size that does not divide a
            layer, no blocks). Layers outside the blocks are named in a warning (they get RTN).

    Example:
        >>> from quantpilot.testing import tiny_causal_lm
        >>> lm = tiny_causal_lm("gpt2")
        >>> gptq_targets(lm, ["transformer.h.0.mlp.c_fc"], [{"input_ids": torch.zeros(1, 128, dtype=torch.long)}],
        ...              None, None)[0]
        'transformer.h'
    """
    if not names:
        raise ValueError("GPTQ found no Linear / Conv1D layer to quantize: check the recipe's layers and skip")
    widths = {n: linear_weight(model.get_submodule(n)).shape[1] for n in names}
    if group_size is not None:
        bad = [f"{n} (in_features={k})" for n, k in widths.items() if k % group_size]
        if bad:
            raise ValueError(f"group_size={group_size} does not divide the input width of {bad[:3]}")
    tokens = sum(_tokens(b) for b in batches)
    need = max(widths.values())
    if tokens < need:
        raise ValueError(
            f"GPTQ needs at least {need} calibration tokens (the widest layer's in_features, so that H = 2XᵀX "
            f"sees every input direction); got {tokens} in {len(batches)} batches. Pass more batches, e.g. "
            "calibration_batches(tokenizer, n=128, seq_len=256)"
        )
    if blocks is not None:
        found = (blocks, model.get_submodule(blocks))
        if not isinstance(found[1], nn.ModuleList):
            raise ValueError(f"blocks={blocks!r} names a {type(found[1]).__name__}, not an nn.ModuleList of blocks")
    else:
        found = find_blocks(model, names)
    if found is None:
        raise ValueError(
            f"found no nn.ModuleList of repeated blocks holding the layers {names[:3]}...; pass blocks='<name of the "
            "ModuleList>' (e.g. 'model.layers') or use quantpilot.algorithms.rtn"
        )
    block_list_name, block_list = found
    outside = [n for n in names if not n.startswith(f"{block_list_name}.")]
    if outside:
        # The recipe still quantizes them: the walker that follows gives them round-to-nearest codes.
        warnings.warn(
            f"GPTQ quantizes the layers inside {block_list_name!r}; {outside[:5]} lie outside it and get "
            "round-to-nearest weights (add them to the recipe's skip to keep them float)",
            stacklevel=4,
        )
    return block_list_name, block_list, widths


def gptq_blocks(
    model: nn.Module,
    batches: Sequence[Any],
    names: list[str],
    spec: QuantSpec,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    blocks: str | None = None,
    scale_dtype: torch.dtype = torch.float16,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """GPTQ's sequential pass over the float `model`: `{layer: (codes, scale, zero point)}`.

    Each block's Hessians come from the outputs of the blocks before it, already quantized: every
    layer is replaced, as soon as it is quantized, by a packed `WeightOnlyLinear` holding its codes.
    The float weights are read, never written.

    Example:
        >>> from quantpilot.testing import tiny_causal_lm
        >>> from quantpilot.nn.packed import weight_only_spec
        >>> lm = tiny_causal_lm("gpt2"); data = [{"input_ids": torch.randint(0, 512, (2, 64))}]
        >>> out = gptq_blocks(lm, data, ["transformer.h.0.mlp.c_fc"], weight_only_spec(4, 64))
        >>> out["transformer.h.0.mlp.c_fc"][0].dtype
        torch.uint8
    """
    block_list_name, block_list, widths = gptq_targets(model, names, batches, spec_group(spec), blocks)
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    with eval_mode(model), torch.no_grad():
        inputs = _first_block_inputs(model, block_list[0], batches)
        for index, block in enumerate(block_list):
            prefix = f"{block_list_name}.{index}."
            inside = {n[len(prefix) :]: n for n in names if n.startswith(prefix)}
            accumulators = block_hessians(block, {s: widths[f] for s, f in inside.items()}, inputs)
            results = gptq_block_layers(
                block,
                accumulators,
                spec,
                block_size=block_size,
                damp=damp,
                act_order=act_order,
                scale_dtype=scale_dtype,
            )
            quantized.update({inside[short]: result for short, result in results.items()})
            # The next block sees what this quantized block outputs, as in the paper's sequential scheme.
            with dequantized_once(block, list(results)):
                inputs = [_with_hidden(inp, _hidden(block(*inp[0], **inp[1]))) for inp in inputs]
    return quantized


def block_hessians(block: nn.Module, widths: dict[str, int], inputs: Sequence[tuple[tuple, dict]]) -> dict[str, Any]:
    """One pass of the block over its recorded inputs: a `HessianAccumulator` per layer (short names).

    Layers fed the same tensor get the same accumulator object (`accs["q"] is accs["k"]`).

    Streamed quantization (`quantpilot.streaming`) calls this and `gptq_block_layers` block by block,
    so both paths share one GPTQ.

    Example:
        >>> block = nn.Sequential(nn.Linear(4, 4))
        >>> accs = block_hessians(block, {"0": 4}, [((torch.ones(2, 4),), {})])
        >>> accs["0"].tokens
        2
    """
    from .gptq import HessianAccumulator

    accumulators = {n: HessianAccumulator(width) for n, width in widths.items()}
    # Layers fed the very same tensor (q/k/v after one norm, gate/up) share one accumulator: one XᵀX
    # instead of three. Who shares with whom is read off the first call and checked on every later one.
    leader: dict[str, str] = {}
    seen: dict[int, tuple[torch.Tensor, str]] = {}  # this call's inputs: id -> (tensor, first layer fed it)

    def record(n: str, args: tuple, _kw: dict, _out: Any) -> None:
        x = args[0]
        hit = seen.get(id(x))
        first = hit[1] if hit is not None and hit[0] is x else None
        if n not in leader:
            leader[n] = first or n
            accumulators[n] = accumulators[leader[n]]
        if leader[n] != n:
            if first != leader[n]:
                raise RuntimeError(f"{n} was fed {leader[n]}'s input on the first call but not now")
            return
        seen[id(x)] = (x, n)
        accumulators[n].add(x)

    with observe(block, list(accumulators), after=record), torch.no_grad():
        for args, kwargs in inputs:
            block(*args, **kwargs)
            seen.clear()
    return accumulators


def gptq_block_layers(
    block: nn.Module,
    accumulators: dict[str, Any],
    spec: QuantSpec,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    scale_dtype: torch.dtype = torch.float16,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """GPTQ each layer of `block` named in `accumulators` and put a packed `WeightOnlyLinear` in its place.

    Returns `{short name: (codes, scale, zero point)}`.

    Example:
        >>> from quantpilot.nn.packed import weight_only_spec
        >>> block = nn.Sequential(nn.Linear(64, 4))
        >>> accs = block_hessians(block, {"0": 64}, [((torch.randn(128, 64),), {})])
        >>> _ = gptq_block_layers(block, accs, weight_only_spec(4, 32)); type(block[0]).__name__
        'WeightOnlyLinear'
    """
    from .gptq import gptq_quantize_weight, hessian_factor

    results, factors = {}, {}
    for short, accumulator in accumulators.items():
        module = block.get_submodule(short)
        # One factorisation per distinct Hessian: q/k/v (and gate/up) share theirs (11008 wide: ~18 s each).
        if id(accumulator) not in factors:
            factors = {id(accumulator): hessian_factor(accumulator.hessian, damp, act_order)}
        result = gptq_quantize_weight(
            linear_weight(module),
            accumulator.hessian,
            spec,
            block_size=block_size,
            damp=damp,
            act_order=act_order,
            scale_dtype=scale_dtype,
            factor=factors[id(accumulator)],
        )
        results[short] = result
        # The next blocks must see this layer quantized. A packed layer takes its place instead of
        # the dequantized values being written into the float weight: the float tensors are only
        # read, so `quantize` can share them with the user's model instead of copying them.
        codes, scale, zero = result
        bias = getattr(module, "bias", None)
        packed = WeightOnlyLinear.from_codes(codes, scale, zero, spec, bias, scale_dtype)
        packed.float_dtype = linear_weight(module).dtype
        packed.train(module.training)
        replace_module(block, short, packed)
    return results


class _Dequantized(nn.Module):
    """Stands in for a packed layer during a replay: its weight dequantized once, not on every call.

    The packed layer's own forward (`F.linear(x, quantized_weight(x.dtype), bias)`), so outputs are the same bits.
    """

    def __init__(self, packed: nn.Module) -> None:
        super().__init__()
        self.packed = packed
        self.cache: dict[torch.dtype, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in self.cache:
            self.cache = {x.dtype: self.packed.quantized_weight(x.dtype)}
        bias = None if self.packed.bias is None else self.packed.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.cache[x.dtype], bias)


@contextmanager
def dequantized_once(block: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Replay `block` with its packed layers `names` dequantized once (restored on exit, even on error).

    A 7B block's 77 calls of packed layers dequantized their weights on every call: 51 s of replay vs 9 s.

    Example:
        >>> from quantpilot.nn.packed import weight_only_spec
        >>> block = nn.Sequential(nn.Linear(64, 4))
        >>> _ = gptq_block_layers(block, block_hessians(block, {"0": 64}, [((torch.randn(128, 64),), {})]),
        ...                       weight_only_spec(4, 32))
        >>> x = torch.randn(2, 64); before = block(x)
        >>> with dequantized_once(block, ["0"]):
        ...     same = torch.equal(block(x), before)
        >>> same, type(block[0]).__name__
        (True, 'WeightOnlyLinear')
    """
    originals = {n: block.get_submodule(n) for n in names}
    for n, m in originals.items():
        replace_module(block, n, _Dequantized(m))
    try:
        yield
    finally:
        for n, m in originals.items():
            replace_module(block, n, m)


def spec_group(spec: QuantSpec) -> int | None:
    """The group size of a weight spec, None for per-channel.

    Example:
        >>> from quantpilot.nn.packed import weight_only_spec
        >>> spec_group(weight_only_spec(4, 64)), spec_group(weight_only_spec(8, None))
        (64, None)
    """
    return spec.granularity.size if isinstance(spec.granularity, PerGroup) else None
