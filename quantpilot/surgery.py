"""Model surgery, one way each: replace a module by name, and observe what named modules see and return.

Every method that needs a layer's inputs or outputs (SmoothQuant's channel maxima, AWQ's statistics
and block replays, GPTQ's Hessians and block inputs, calibration statistics, per-layer errors, the
export check) goes through `observe`: hooks installed on the named modules for the duration of a
`with` block and removed on exit, even on error. A callback that returns a value replaces the
module's input (`before`) or output (`after`), as PyTorch's hooks do. `inputs_of` records what a
module is called with and stops the forward there.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
    >>> seen = {}
    >>> def record(name, args, kwargs, output):
    ...     seen[name] = output.shape  # returns None: the output is not replaced
    >>> with observe(net, ["0"], after=record):
    ...     _ = net(torch.ones(4, 2))
    >>> seen
    {'0': torch.Size([4, 3])}
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from .batches import call_model

__all__ = ["replace_module", "observe", "inputs_of", "StopForward"]

Before = Callable[[str, tuple, dict], Any]
After = Callable[[str, tuple, dict, Any], Any]


def replace_module(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put `module` at the qualified `name` inside `root`; returns the root (the module itself for name "").

    Example:
        >>> import torch
        >>> net = replace_module(torch.nn.Sequential(torch.nn.ReLU()), "0", torch.nn.Tanh())
        >>> type(net[0]).__name__
        'Tanh'
    """
    if name == "":
        return module
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)
    return root


def _resolve(model: nn.Module, modules: Mapping[str, nn.Module] | Iterable[str]) -> dict[str, nn.Module]:
    if isinstance(modules, Mapping):
        return dict(modules)
    return {name: model.get_submodule(name) for name in modules}


@contextlib.contextmanager
def observe(
    model: nn.Module,
    modules: Mapping[str, nn.Module] | Iterable[str],
    *,
    before: Before | None = None,
    after: After | None = None,
) -> Iterator[None]:
    """Call `before(name, args, kwargs)` / `after(name, args, kwargs, output)` around each named module's calls.

    Args:
        model: the model the names are qualified in.
        modules: qualified names, or `{label: module}` to observe modules under labels of your own.
        before: called before the module runs; a non-None return replaces its positional inputs
            (a tuple, or one value for a single input).
        after: called after it ran; a non-None return replaces its output.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> with observe(net, ["0"], after=lambda *_: torch.zeros(1, 2)):
        ...     net(torch.ones(1, 2)).tolist()
        [[0.0, 0.0]]
    """
    handles = []
    try:
        for name, module in _resolve(model, modules).items():
            if before is not None:
                hook = lambda _m, args, kwargs, name=name: _replaced_inputs(before(name, args, kwargs), kwargs)  # noqa: E731
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            if after is not None:
                hook = lambda _m, args, kwargs, output, name=name: after(name, args, kwargs, output)  # noqa: E731
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _replaced_inputs(result: Any, kwargs: dict) -> tuple[tuple, dict] | None:
    if result is None:
        return None
    return (result if isinstance(result, tuple) else (result,)), kwargs


class StopForward(Exception):
    """Raised from an observer to end a forward pass early (`inputs_of` uses it)."""


def inputs_of(
    model: nn.Module, module: nn.Module, batches: Sequence[Any], run: Callable[[nn.Module, Any], Any] = call_model
) -> list[tuple[tuple, dict]]:
    """The `(args, kwargs)` each batch passes to `module`; the forward stops there, the rest never runs.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> [args[0].shape for args, _ in inputs_of(net, net[1], [torch.ones(3, 2)])]
        [torch.Size([3, 2])]
    """
    caught: list[tuple[tuple, dict]] = []

    def catch(_name, args, kwargs):
        caught.append((args, kwargs))
        raise StopForward

    with observe(model, {"target": module}, before=catch):
        for batch in batches:
            try:
                run(model, batch)
            except StopForward:
                pass
    return caught
