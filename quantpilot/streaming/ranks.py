"""GPTQ Hessians summed across `torch.distributed` processes, each of which saw its share of the data.

`H = 2/n Σ xᵀx` is a mean over tokens: the merge weights each rank's mean by its token count
(`Σ_r n_r H_r / Σ_r n_r`), summed in float64 with `all_reduce`, then broadcast from rank 0 so
every rank solves the very same matrix and builds bit-identical codes. Works on every backend
(gloo on CPU, NCCL on GPUs); outside `torch.distributed` it does nothing.

Example:
    >>> from quantpilot.algorithms.gptq import HessianAccumulator
    >>> acc = HessianAccumulator(2); acc.add(torch.ones(3, 2))
    >>> merge_hessians({"fc": acc}); acc.tokens  # one process: unchanged
    3
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..distributed import is_distributed

__all__ = ["merge_hessians", "rank", "gather_objects", "barrier"]


def rank() -> int:
    """This process's rank (0 outside torch.distributed).

    Example:
        >>> rank()
        0
    """
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    """Wait for every rank (nothing outside torch.distributed).

    Example:
        >>> barrier()
    """
    if is_distributed():
        dist.barrier()


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (`[value]` outside torch.distributed).

    Example:
        >>> gather_objects("a")
        ['a']
    """
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def merge_hessians(accumulators: dict[str, Any]) -> None:
    """Replace each `HessianAccumulator` by the token-weighted mean over every rank (a collective call).

    Every rank must pass the same layer names; they are visited in sorted order. An accumulator shared
    by several layers (q/k/v) is merged once.

    Example:
        >>> from quantpilot.algorithms.gptq import HessianAccumulator
        >>> merge_hessians({"fc": HessianAccumulator(2)})  # one process: nothing to merge
    """
    if not is_distributed():
        return
    merged_ids: set[int] = set()
    for name in sorted(accumulators):
        acc = accumulators[name]
        if id(acc) in merged_ids:
            continue
        merged_ids.add(id(acc))
        tokens = torch.tensor([float(acc.tokens)], dtype=torch.float64)
        total = acc.hessian.double() * acc.tokens
        dist.all_reduce(tokens)
        dist.all_reduce(total)
        merged = (total / tokens.clamp_min(1)).float()
        dist.broadcast(merged, src=0)  # one matrix everywhere, whatever the reduction order gave each rank
        acc.hessian, acc.tokens = merged, int(tokens.item())
