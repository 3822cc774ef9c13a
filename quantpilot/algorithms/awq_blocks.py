"""Replaying the block a layer group feeds, so AWQ can score its scale search on the block's output.

The AWQ paper and its reference code pick each group's alpha by the output error of the module the
group's shared input enters (`module2inspect`): the whole attention for q/k/v, the whole MLP for
gate/up, so that an error in a query or key projection is weighed by what the softmax makes of it.
Here that module is found from data flow (the outermost module that receives the norm's output tensor
and holds every layer of the group, but not the norm), its inputs are recorded on a few calibration
batches, and the search replays it with the group's weights fake-quantized.

Example:
    >>> import torch
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    >>> calls = capture_inputs(mlp, {"": mlp}, [torch.randn(4, 8)], tokens=4)
    >>> len(calls[""]), block_error(mlp, calls[""], reference=[mlp(*a, **k) for a, k in calls[""]])
    (1, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..batches import call_model, eval_mode, first_tensor
from ..surgery import observe

__all__ = ["inspected_module", "capture_inputs", "block_error", "Call"]

# One recorded call of a module: its positional and keyword arguments.
Call = tuple[tuple[Any, ...], dict[str, Any]]
# Keyword arguments that carry a key/value cache: replaying a call with the cache it was recorded with
# would append to it (and attend to the recorded keys twice), so the replay runs without one.
_CACHE_KWARGS = ("cache", "past_key_value", "past_key_values", "layer_past")


def _contains(parent: str, child: str) -> bool:
    return parent == "" or child == parent or child.startswith(parent + ".")


def inspected_module(norm: str, layers: tuple[str, ...], receivers: list[str]) -> str | None:
    """The module whose output scores a norm-fed group: the outermost receiver holding all its layers.

    Args:
        norm: qualified name of the norm producing the group's input.
        layers: the group's Linear layers.
        receivers: modules that were called with the norm's output tensor, in call order.

    Returns:
        The module's qualified name, or None when only the layers themselves receive it (the
        search then scores the layers' own outputs, which is the same thing).

    Example:
        >>> inspected_module("h.0.ln_1", ("h.0.attn.c_attn",), ["h.0.attn", "h.0.attn.c_attn"])
        'h.0.attn'
    """
    candidates = [
        r
        for r in receivers
        if r != "" and not _contains(r, norm) and all(_contains(r, layer) for layer in layers) and r not in layers
    ]
    return min(candidates, key=lambda r: r.count(".")) if candidates else None


def _replayable(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        if key in _CACHE_KWARGS or type(value).__name__.endswith("Cache"):
            value = None
        elif key == "use_cache":
            value = False
        out[key] = value
    return out


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple | list):
        return type(value)(_detached(v) for v in value)
    return value


def capture_inputs(
    model: nn.Module, modules: Mapping[str, nn.Module], batches: list[Any], tokens: int
) -> dict[str, list[Call]]:
    """Record each module's calls over the first calibration batches until it has seen `tokens` tokens.

    Args:
        model: the model to run (float; not modified).
        modules: qualified name -> module to record.
        batches: calibration inputs as `call_model` takes them.
        tokens: how many input rows (tokens) each module's recorded calls should hold at least.

    Returns:
        name -> list of (args, kwargs), cache arguments removed so each call can be replayed.

    Example:
        >>> lin = torch.nn.Linear(4, 2)
        >>> calls = capture_inputs(lin, {"": lin}, [torch.randn(3, 4)] * 5, tokens=6)
        >>> len(calls[""])
        2
    """
    calls: dict[str, list[Call]] = {name: [] for name in modules}
    seen = dict.fromkeys(modules, 0)

    def record(name: str, args: tuple, kwargs: dict) -> None:
        if seen[name] >= tokens:
            return
        x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        calls[name].append((_detached(tuple(args)), _detached(_replayable(kwargs))))
        seen[name] += x.numel() // x.shape[-1] if isinstance(x, torch.Tensor) and x.dim() else 1

    with observe(model, dict(modules), before=record), eval_mode(model), torch.no_grad():
        for batch in batches:
            if all(count >= tokens for count in seen.values()):
                break
            call_model(model, batch)
    return calls


def block_error(module: nn.Module, calls: list[Call], reference: list[Any]) -> float:
    """Summed squared difference between the module's main output on the recorded calls and `reference`.

    Example:
        >>> lin = torch.nn.Linear(2, 1)
        >>> calls = [((torch.ones(1, 2),), {})]
        >>> block_error(lin, calls, [lin(torch.ones(1, 2)) + 1])
        1.0
    """
    error = 0.0
    with torch.no_grad():
        for (args, kwargs), ref in zip(calls, reference, strict=True):
            out = first_tensor(module(*args, **kwargs))
            error += float((out.float() - first_tensor(ref).float()).pow(2).sum())
    return error
