"""How quantpilot feeds a batch to a model: one convention shared by calibration, evaluation and QAT.

A dict is passed as keyword arguments, a tuple or list as positional arguments, anything else
as the single argument.

Example:
    >>> import torch
    >>> call_model(torch.nn.Identity(), torch.ones(2)).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["call_model", "first_tensor", "eval_mode"]


def call_model(model: nn.Module, batch: Any) -> Any:
    """Run `model` on `batch`: `model(**batch)`, `model(*batch)` or `model(batch)`.

    Example:
        >>> import torch
        >>> call_model(torch.nn.Linear(2, 1, bias=False), (torch.zeros(1, 2),)).shape
        torch.Size([1, 1])
    """
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, tuple | list):
        return model(*batch)
    return model(batch)


def first_tensor(output: Any) -> torch.Tensor:
    """The main tensor of a model output: itself, `last_hidden_state`/`logits`, or the first tensor inside.

    Example:
        >>> import torch
        >>> first_tensor({"logits": torch.ones(1)}).tolist()
        [1.0]
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("last_hidden_state", "logits"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        values = list(output.values())
    elif isinstance(output, tuple | list):
        values = list(output)
    else:
        raise TypeError(f"cannot find a tensor in a model output of type {type(output).__name__}")
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError("the model output holds no tensor to compare")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with every module in eval mode; restore each module's own mode after, even on error.

    Restoring per module (not `model.train(flag)`) keeps a deliberately frozen BatchNorm or dropout
    inside a training model as the user left it.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Dropout()).train()
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
