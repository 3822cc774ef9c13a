"""Recipes with steps that act inside `freeze`: record the calibration batches, then run the steps on them.

`quantize` leaves such a model float (`pending`): it carries its recipe and an empty list of batches.
`calibrate` appends every batch the model is called on. `freeze` runs each step's `before_install`
on the float model, installs the recipe's quantizers, runs `after_install`, calibrates the static
activation ranges on the recorded batches, and then freezes as usual.

Example:
    >>> import torch, quantpilot as qp
    >>> recipe = qp.Recipe(steps=(qp.steps.SmoothQuant(0.5),))
    >>> qm = qp.quantize(torch.nn.Sequential(torch.nn.Linear(8, 8)), recipe)
    >>> is_pending(qm)
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

from .batches import call_model
from .distributed import is_distributed
from .steps import StepContext
from .surgery import observe

__all__ = [
    "recipe_needs_batches",
    "BATCHES_ATTR",
    "CHOICES_ATTR",
    "FAILED_ATTR",
    "is_pending",
    "mark_pending",
    "recording",
    "run_deferred_steps",
    "mark_failed",
]

BATCHES_ATTR = "quantpilot_recorded_batches"
# What the steps chose (AWQ alphas, smoothed layers, ...): `save` writes it into the saved map.
CHOICES_ATTR = "quantpilot_choices"
# Set on a model a quantpilot step or freeze failed part-way through: it is neither the float model nor a
# quantized one, so it refuses to run or to be quantized again (the message says why).
FAILED_ATTR = "quantpilot_failed"


def mark_failed(model: nn.Module, error: BaseException) -> None:
    """Make a model a failure left part-way changed refuse every forward and every `quantize`, saying why.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2); mark_failed(net, KeyboardInterrupt())
        >>> try:
        ...     net(torch.ones(1, 2))
        ... except ValueError as err:
        ...     print(str(err)[:44])
        quantpilot stopped part-way through changing
    """
    reason = (
        f"quantpilot stopped part-way through changing this model ({type(error).__name__}: {error}); "
        "its weights are neither the float ones nor a finished quantization: load the float model again"
    )
    model.__dict__[FAILED_ATTR] = reason

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise ValueError(reason)

    model.register_forward_pre_hook(refuse)


def recipe_needs_batches(recipe: Any) -> bool:
    """True when a recipe needs calibration batches before freeze: static activation ranges or steps fitted to data.

    Example:
        >>> import quantpilot as qp
        >>> recipe_needs_batches(qp.Recipe.preset("int8-static")), recipe_needs_batches(qp.Recipe.preset("w8a16"))
        (True, False)
    """
    static = recipe.activations is not None and not recipe.dynamic
    return static or any(step.needs_data for step in recipe.steps)


def is_pending(model: nn.Module) -> bool:
    """True for a model `quantize` prepared for a recipe with deferred steps and `freeze` has not run on yet.

    Example:
        >>> import torch
        >>> is_pending(torch.nn.Linear(2, 2))
        False
    """
    return isinstance(model.__dict__.get(BATCHES_ATTR), list)


def mark_pending(model: nn.Module) -> None:
    """Give the model an empty list of recorded batches (the pending state).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2); mark_pending(net); is_pending(net)
        True
    """
    model.__dict__[BATCHES_ATTR] = []


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[None]:
    """Append each top-level call's inputs to the pending model's batches while the block runs.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2); mark_pending(net)
        >>> with recording(net):
        ...     _ = net(torch.ones(1, 2))
        >>> len(net.quantpilot_recorded_batches)
        1
    """
    batches = model.__dict__[BATCHES_ATTR]

    def record(_name: str, args: tuple, kwargs: dict) -> None:
        # Stored as `call_model` replays them: keywords alone as a dict, one positional as itself.
        if kwargs and not args:
            batches.append(dict(kwargs))
        elif len(args) == 1 and not kwargs:
            batches.append(args[0])
        elif not kwargs:
            batches.append(tuple(args))
        else:
            raise ValueError("calibrate records either positional or keyword inputs, not both in one call")

    with observe(model, {"model": model}, before=record):
        yield


def run_deferred_steps(model: nn.Module, recipe: Any) -> nn.Module:
    """Run the steps, install the quantizers and calibrate static ranges on the recorded batches.

    Returns the model with quantizers installed and calibrated (not yet frozen); the pending state is gone.

    Raises:
        ValueError: a step needs data and `calibrate` recorded none.

    Example:
        >>> import torch, quantpilot as qp
        >>> qm = qp.quantize(torch.nn.Sequential(torch.nn.Linear(8, 8)), qp.Recipe(steps=(qp.steps.SmoothQuant(),)))
        >>> with qp.calibrate(qm):
        ...     _ = qm(torch.randn(64, 8))
        >>> type(run_deferred_steps(qm, qp.recipe_of(qm))[0]).__name__
        'QuantLinear'
    """

    # Checked before anything changes: a missing calibration pass leaves the model as it was.
    hungry = [step.name for step in recipe.steps if step.needs_data]
    if hungry and is_distributed():
        # Each rank would fit GPTQ/AWQ/SmoothQuant to its own shard and build a different model.
        raise ValueError(
            f"the recipe's steps {hungry} fit the model to one process's calibration data: under torchrun each "
            "rank would build a different model; run them in one process (e.g. rank 0) and load the saved result"
        )
    if hungry and not model.__dict__[BATCHES_ATTR]:
        raise ValueError(
            f"the recipe's steps {hungry} run on calibration data: call the model on batches inside "
            "`with quantpilot.calibrate(model):` before quantpilot.freeze"
        )
    if not model.__dict__[BATCHES_ATTR] and recipe_needs_batches(recipe):
        raise ValueError(
            "the recipe calibrates activation ranges: call the model on batches inside "
            "`with quantpilot.calibrate(model):` before quantpilot.freeze"
        )
    try:
        return _run_steps(model, recipe)
    except BaseException as err:
        mark_failed(model, err)
        raise


def _run_steps(model: nn.Module, recipe: Any) -> nn.Module:
    from .api import calibrate
    from .install import install_layers

    batches = model.__dict__[BATCHES_ATTR]
    context = StepContext(list(batches))
    for step in recipe.steps:
        model = step.before_install(model, recipe, context)
    model = install_layers(model, recipe)
    for step in recipe.steps:
        model = step.after_install(model, recipe, context)
    del model.__dict__[BATCHES_ATTR]
    if any(isinstance(q, nn.Module) and getattr(q, "needs_calibration", False) for q in model.modules()):
        if not context.batches:
            raise ValueError(
                "the recipe calibrates activation ranges: call the model on batches inside "
                "`with quantpilot.calibrate(model):` before quantpilot.freeze"
            )
        with calibrate(model, progress=False):
            for batch in context.batches:
                call_model(model, batch)
    if context.report:
        model.__dict__[CHOICES_ATTR] = context.report
    return model
