"""The one model walker: put the quantized layer each recipe entry asks for in place of the float one.

`quantize` calls it on the float copy (or, for a recipe with deferred steps, `freeze` calls it once
the steps ran); `load` calls it to rebuild the structure a saved model had. Layers are looked up in
`quantpilot.nn`'s registry, so a new layer type never edits this walker; a layer a step already
quantized (a `QuantModule`) and everything inside it is left alone.

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> type(install_layers(net, qp.Recipe(activations=None))[0]).__name__
    'QuantLinear'
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .deferred import BATCHES_ATTR
from .nn import QuantModule, TensorQuantizer, lookup
from .nn.experts import EXPERTS_TYPE, expert_stack_names, skipped_stacks, warn_expert_gaps
from .recipe import Recipe
from .spec import PerGroup
from .surgery import replace_module

__all__ = ["plan_layers", "check_plan", "install_layers", "replace_module"]


def plan_layers(model: nn.Module, recipe: Recipe) -> tuple[list[tuple[str, nn.Module, Any, Any, bool]], set[str]]:
    """The layers `recipe` quantizes in `model`: `[(name, module, registry entry, LayerRecipe, quantize input)]`.

    Also returns the type names seen, for error messages. Modules inside an already quantized layer
    are not visited.

    Example:
        >>> import torch, quantpilot as qp
        >>> plan, _ = plan_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)), qp.Recipe())
        >>> [(name, has_input) for name, _, _, _, has_input in plan]
        [('0', True)]
    """
    plan, seen_types = [], set()
    inside_quantized: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{q}.") for q in inside_quantized):
            continue
        seen_types.add(type(module).__name__)
        if isinstance(module, QuantModule):
            inside_quantized.append(name)
            continue
        entry = lookup(module)
        if entry is None:
            continue
        layer = recipe.for_layer(name, entry.name)
        if layer is None and entry.selected_with is not None:  # MoE experts go where the recipe's Linears go
            layer = recipe.for_layer(name, entry.selected_with)
        has_activation = entry.has_input and layer is not None and layer.activations is not None
        if layer is None or (layer.weights is None and not has_activation):
            continue
        plan.append((name, module, entry, layer, has_activation))
    return plan, seen_types


def _grouped_width(module: nn.Module) -> int | None:
    stacks = [getattr(module, n) for n in expert_stack_names(module)]
    if stacks:  # MoE experts: a group divides every stack's input width exactly when it divides their gcd
        transposed = bool(getattr(module, "is_transposed", False))
        return math.gcd(*(s.shape[1] if transposed else s.shape[2] for s in stacks))
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return None
    # transformers' Conv1D stores (in, out); every other layer groups along its last weight axis.
    return weight.shape[0] if type(module).__name__ == "Conv1D" else weight.shape[-1]


def check_plan(plan: list) -> None:
    """Raise, before anything changes, if a planned layer cannot take its scheme (a group size that does not divide it).

    Example:
        >>> import torch, quantpilot as qp
        >>> plan, _ = plan_layers(torch.nn.Sequential(torch.nn.Linear(100, 4)), qp.Recipe.preset("w4a16-g128"))
        >>> check_plan(plan)
        Traceback (most recent call last):
        ...
        ValueError: PerGroup(size=128) does not divide the grouped width of layers ['0' (Linear, 100)]; skip them ...
    """
    bad = []
    for name, module, _entry, layer, _has_input in plan:
        spec = layer.weights
        width = _grouped_width(module)
        if spec is not None and isinstance(spec.granularity, PerGroup) and width and width % spec.granularity.size:
            bad.append((name, type(module).__name__, width, spec.granularity))
    if bad:
        listed = ", ".join(f"'{n}' ({t}, {w})" for n, t, w, _ in bad[:3]) + (
            f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        )
        raise ValueError(
            f"{bad[0][3]} does not divide the grouped width of layers [{listed}]; skip them in the recipe "
            "(skip=...) or choose a group size that divides every quantized layer's input width"
        )


def install_layers(model: nn.Module, recipe: Recipe, plan: list | None = None) -> nn.Module:
    """Replace every planned layer by its quantized counterpart, then add the recipe's functional points.

    Args:
        model: the (float) model, changed in place.
        recipe: what to install.
        plan: `plan_layers(model, recipe)[0]` when the caller already has it.

    Returns:
        The model (a new root only when the model itself is a single layer).

    Example:
        >>> import torch, quantpilot as qp
        >>> install_layers(torch.nn.Linear(2, 2), qp.Recipe(activations=None)).__class__.__name__
        'QuantLinear'
    """
    if plan is None:
        plan = plan_layers(model, recipe)[0]
    # Said when the model is made (quantize, or freeze running the steps on recorded batches), not again at load.
    warn_expert_gaps(plan, recipe, steps_ran=BATCHES_ATTR in model.__dict__)
    for name, module, entry, layer, has_activation in plan:
        input_quantizer = None
        if has_activation:
            input_quantizer = TensorQuantizer(
                layer.activations, dynamic=layer.dynamic, calibrator=layer.activation_calibrator
            )
            input_quantizer.qualname = f"{name}.input_quantizer" if name else "input_quantizer"
        # An expert stack skipped by its own name stays float (sensitivity sweeps skip layers by name).
        extra = {"float_stacks": skipped_stacks(name, module, recipe.skip)} if entry.name == EXPERTS_TYPE else {}
        qmodule = entry.factory(
            module,
            weight_spec=layer.weights,
            weight_calibrator=layer.weight_calibrator,
            input_quantizer=input_quantizer,
            **extra,
        )
        qmodule.train(module.training)
        model = replace_module(model, name, qmodule)
    if "matmul" in recipe.ops:
        from .functional_points import install_matmul_points

        install_matmul_points(model, recipe)
    return model
