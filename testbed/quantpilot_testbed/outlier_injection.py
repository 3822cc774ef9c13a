"""Give a small decoder the activation outliers of a large one, without changing what it computes.

Beyond about 6.7 B parameters, language models grow a few hidden dimensions whose LayerNorm outputs
reach 20-100x the others, in every layer (Dettmers et al., 2022); LLM.int8() and SmoothQuant exist
for them. Small models lack them, so per-tensor int8 looks fine there and the two methods show
nothing. `inject_outlier_channels` multiplies chosen channels of every LayerNorm / RMSNorm output
by `factor` (its weight and bias) and divides the matching input columns of the Linear layers that
read that output by the same factor: the float model computes the same function, but the inputs of
those layers now carry outlier channels of the size seen in large models.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))
    >>> x = torch.randn(16, 8)
    >>> hot = inject_outlier_channels(net, x, channels=[2], factor=50.0)
    >>> torch.allclose(hot(x), net(x), atol=1e-5), float((hot[0].weight[2] / net[0].weight[2]).detach())
    (True, 50.0)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from quantpilot.algorithms.awq import ScaleGroup, find_scale_groups

__all__ = ["inject_outlier_channels"]


def inject_outlier_channels(
    model: nn.Module,
    example_batch: Any,
    *,
    channels: Sequence[int] | None = None,
    n_channels: int = 4,
    factor: float = 50.0,
    seed: int = 0,
    inplace: bool = False,
) -> nn.Module:
    """Scale a few channels of every norm output by `factor`, the Linear layers reading them compensating.

    Args:
        model: a float decoder (GPT-2, Llama, OPT, ... or any model with norm -> Linear pairs).
        example_batch: one input, used once to find which Linear layers read each norm's output.
        channels: the hidden channels to scale (the same ones in every layer, as in large models);
            None picks `n_channels` at random with `seed`.
        n_channels: how many channels to pick when `channels` is None.
        factor: the multiplier (20-100 matches the outliers of >6.7 B models).
        inplace: change `model` itself (otherwise a copy).

    Returns:
        The model with outliers; `model.quantpilot_outliers` records the channels, factor and norms.

    Raises:
        ValueError: a factor <= 0, channels out of range, or no norm feeding a Linear layer.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))
        >>> inject_outlier_channels(net, torch.randn(2, 8), channels=[1, 5]).quantpilot_outliers["channels"]
        [1, 5]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not float(factor) > 0.0:
        raise ValueError(f"factor must be a positive number (20-100 mimics large models), got {factor!r}")
    norm_groups = _norm_groups(model, example_batch)
    width = model.get_submodule(norm_groups[0].prev).weight.shape[0]
    channels = _pick_channels(channels, n_channels, width, seed)
    target = model if inplace else copy.deepcopy(model)
    _scale_channels(target, norm_groups, channels, width, factor)
    target.quantpilot_outliers = {
        "channels": channels,
        "factor": float(factor),
        "norms": [g.prev for g in norm_groups],
    }
    return target


def _norm_groups(model: nn.Module, example_batch: Any) -> list[ScaleGroup]:
    """The norm -> Linear groups whose Linear layers can absorb the inverse factor (`find_scale_groups`' groups)."""
    groups = [g for g in find_scale_groups(model, example_batch, skip=()) if g.prev_rows is None]
    modules = dict(model.named_modules())
    shared = _shared_parameter_ids(model)
    # A consumer whose weight is tied elsewhere (a head sharing the embedding) cannot compensate privately.
    norm_groups = [
        g
        for g in groups
        if not _is_linear_name(modules, g.prev) and not any(id(modules[n].weight) in shared for n in g.layers)
    ]
    if not norm_groups:
        raise ValueError(
            "found no LayerNorm/RMSNorm whose output feeds a Linear layer directly; outlier channels are injected "
            "at norm outputs, so this model has no place for them"
        )
    return norm_groups


def _pick_channels(channels: Sequence[int] | None, n_channels: int, width: int, seed: int) -> list[int]:
    """The channels given, checked against `width`, or `n_channels` of them drawn with `seed`."""
    if channels is None:
        if isinstance(n_channels, bool) or not isinstance(n_channels, int) or not 1 <= n_channels <= width:
            raise ValueError(f"n_channels must be an int in [1, {width}], got {n_channels!r}")
        g = torch.Generator().manual_seed(seed)
        channels = sorted(torch.randperm(width, generator=g)[:n_channels].tolist())
    channels = [int(c) for c in channels]
    if not channels or any(not 0 <= c < width for c in channels):
        raise ValueError(f"channels must be a non-empty list of indices in [0, {width}), got {channels}")
    return channels


def _scale_channels(
    target: nn.Module, groups: list[ScaleGroup], channels: list[int], width: int, factor: float | int
) -> None:
    """Multiply the channels of each norm of `width` by `factor`; divide the Linear inputs reading them by it."""
    idx = torch.tensor(channels)
    with torch.no_grad():
        for group in groups:
            norm = target.get_submodule(group.prev)
            if norm.weight.shape[0] != width:
                continue  # a norm of another width (e.g. inside attention) keeps its channels
            norm.weight[idx] *= factor
            if getattr(norm, "bias", None) is not None:
                norm.bias[idx] *= factor
            for name in group.layers:
                layer = target.get_submodule(name)
                if isinstance(layer, nn.Linear):
                    layer.weight[:, idx] /= factor
                else:  # transformers' Conv1D stores (in, out)
                    layer.weight[idx, :] /= factor


def _is_linear_name(modules: dict[str, nn.Module], name: str) -> bool:
    weight = getattr(modules[name], "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2


def _shared_parameter_ids(model: nn.Module) -> set[int]:
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return {pid for pid, n in counts.items() if n > 1}
