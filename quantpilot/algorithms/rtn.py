"""RTN: round-to-nearest weight-only quantization (W8A16 per channel, W4A16 per group), packed storage.

Each selected Linear (or GPT-2 `Conv1D`) weight is quantized on its own min/max grid: asymmetric
unsigned codes with a zero point, one scale per output channel (`group_size=None`) or per group of
`group_size` input columns, as the GPTQ and AWQ reference code stores weights. The layers become
`quantpilot.nn.packed.WeightOnlyLinear` (int4 two per byte, fp16 scales and zero points), so the
model really shrinks. RTN is the baseline that GPTQ and AWQ improve on; they reuse
`quantize_weight` and `replace_with_weight_only` from here.

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(128, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> qnet = qp.algorithms.rtn(net, bits=4, group_size=64, skip=("2",))
    >>> type(qnet[0]).__name__, type(qnet[2]).__name__
    ('WeightOnlyLinear', 'Linear')
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatch

import torch
from torch import nn

from .. import api
from ..api import run_pipeline  # noqa: F401 (re-exported: the wrappers' one pipeline)
from ..nn.packed import WeightOnlyLinear, weight_only_spec
from ..nn.registry import linear_layers
from ..nn.storage import quantize_weight  # the arithmetic lives with the packed storage; name kept here
from ..recipe import OUTPUT_HEADS, Recipe
from ..spec import PerChannel, QuantSpec

__all__ = [
    "rtn",
    "quantize_weight",
    "linear_weight",
    "weight_only_targets",
    "replace_with_weight_only",
    "weight_only_recipe",
    "run_pipeline",
]

# Layers the papers keep in float: the output head (tied to the embedding in GPT-2) decides every logit.
DEFAULT_SKIP = OUTPUT_HEADS


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The (out_features, in_features) weight of an `nn.Linear` or a transformers `Conv1D` (which stores W.T).

    Example:
        >>> linear_weight(torch.nn.Linear(3, 2)).shape
        torch.Size([2, 3])
    """
    if isinstance(module, nn.Linear):
        return module.weight
    if _is_conv1d(module):
        return module.weight.t()
    raise TypeError(f"expected nn.Linear or transformers' Conv1D, got {type(module).__name__}")


def weight_only_targets(
    model: nn.Module, layers: Sequence[str] = ("*",), skip: Sequence[str] = DEFAULT_SKIP
) -> list[tuple[str, nn.Module]]:
    """The Linear / Conv1D layers (name, module) a weight-only method quantizes, in model order.

    Args:
        model: the float model.
        layers: fnmatch patterns of names to include.
        skip: fnmatch patterns of names to leave in float (default: the output head).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> [n for n, _ in weight_only_targets(net, skip=("1",))]
        ['0']
    """
    if isinstance(layers, str) or isinstance(skip, str):
        raise TypeError("layers and skip are sequences of patterns, e.g. ('*',) and ('lm_head',), not one string")
    # The registry's one decision of what is a Linear, so a checkpoint this writes is one `load` rebuilds.
    return [(name, m) for name, m in linear_layers(model, skip) if any(fnmatch(name, p) for p in layers)]


def replace_with_weight_only(
    model: nn.Module,
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    spec: QuantSpec,
    scale_dtype: torch.dtype,
    method: str,
) -> nn.Module:
    """Swap each named layer for a `WeightOnlyLinear` holding its codes and attach a matching recipe.

    The recipe quantizes exactly these layers (the others are listed in `skip`), so
    `quantpilot.load` rebuilds the same structure.

    Args:
        model: the model to change in place.
        quantized: {layer name: (codes, scale, zero_point)} from `quantize_weight` or GPTQ.
        spec: the weight scheme.
        scale_dtype: dtype of the stored scales and zero points.
        method: recorded in the recipe's name and notes.

    Returns:
        `model`.

    Example:
        >>> from quantpilot.nn.packed import weight_only_spec
        >>> net, spec = torch.nn.Sequential(torch.nn.Linear(4, 2)), weight_only_spec(8, None)
        >>> q = {"0": quantize_weight(net[0].weight, spec)}
        >>> type(replace_with_weight_only(net, q, spec, torch.float16, "rtn")[0]).__name__
        'WeightOnlyLinear'
    """
    for name, (codes, scale, zero_point) in quantized.items():
        module = model.get_submodule(name)
        bias = getattr(module, "bias", None)
        layer = WeightOnlyLinear.from_codes(codes, scale, zero_point, spec, bias, scale_dtype)
        layer.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    float_layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) or _is_conv1d(m)]
    granularity = "per-channel" if isinstance(spec.granularity, PerChannel) else f"g{spec.granularity.size}"
    recipe = Recipe(
        weights=spec,
        activations=None,
        module_types=("Linear", "Conv1D"),
        skip=tuple(float_layers),
        name=f"{method}-w{4 if spec.dtype.value == 'uint4' else 8}a16-{granularity}",
        notes={"method": method},
    )
    setattr(model, api.RECIPE_ATTR, recipe)
    return model


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if api.quantized_layers(model):
        raise ValueError("this model is already quantized; pass the original float model")


def weight_only_recipe(
    bits: int,
    group_size: int | None,
    symmetric: bool,
    layers: Sequence[str],
    skip: Sequence[str],
    scale_dtype: torch.dtype,
    method: str,
    steps: tuple = (),
) -> Recipe:
    """The recipe of a weight-only method: packed `bits` codes on the Linear / Conv1D layers, activations float.

    Example:
        >>> r = weight_only_recipe(4, 128, False, ("*",), ("lm_head",), torch.float16, "rtn")
        >>> r.name, r.weights.dtype.value, r.activations
        ('rtn-w4a16-g128', 'uint4', None)
    """
    if isinstance(layers, str) or isinstance(skip, str):
        raise TypeError("layers and skip are sequences of patterns, e.g. ('*',) and ('lm_head',), not one string")
    spec = weight_only_spec(bits, group_size, symmetric)
    granularity = "per-channel" if group_size is None else f"g{group_size}"
    return Recipe(
        weights=spec,
        activations=None,
        module_types=("Linear", "Conv1D"),
        layers=tuple(layers),
        skip=tuple(skip),
        scale_dtype=str(scale_dtype).removeprefix("torch."),
        steps=steps,
        name=f"{method}-w{bits}a16-{granularity}",
    )


def rtn(
    model: nn.Module,
    bits: int = 4,
    group_size: int | None = 128,
    *,
    symmetric: bool = False,
    layers: Sequence[str] = ("*",),
    skip: Sequence[str] = DEFAULT_SKIP,
    scale_dtype: torch.dtype = torch.float16,
    inplace: bool = False,
) -> nn.Module:
    """Round-to-nearest weight-only quantization: W8A16 per channel or W4A16 per group, stored packed.

    A thin wrapper: `quantize` + `freeze` with `weight_only_recipe(...)`; the `w4a16-g128` preset
    restricted to Linear layers gives the same codes.

    Args:
        model: a float model with `nn.Linear` / transformers `Conv1D` layers.
        bits: 4 (packed two per byte) or 8.
        group_size: input columns per scale (128 default; 32 / 64 allowed), or None for one scale per
            output channel (the usual W8A16).
        symmetric: zero point fixed at the middle code instead of fitted (asymmetric is the reference).
        layers, skip: fnmatch patterns selecting layers (the output head stays float by default).
        scale_dtype: torch.float16 (default) or torch.bfloat16 for scales and zero points.
        inplace: change `model` itself instead of a copy.

    Returns:
        The quantized model, frozen (`quantpilot.save` / `load` round-trip it).

    Raises:
        ValueError: no layer matches, a layer's in_features is not a multiple of group_size, bad bits.

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.Linear(64, 8))
        >>> qp.algorithms.rtn(net, bits=8, group_size=None)[0].weight_packed.dtype
        torch.uint8
    """
    _check_model(model)
    recipe = weight_only_recipe(bits, group_size, symmetric, layers, skip, scale_dtype, "rtn")
    targets = weight_only_targets(model, layers, skip)
    if not targets:
        raise ValueError(f"no nn.Linear / Conv1D layer matches layers={tuple(layers)} minus skip={tuple(skip)}")
    if group_size is not None:
        widths = {n: linear_weight(m).shape[1] for n, m in targets}
        bad = [f"{n} (in_features={k})" for n, k in widths.items() if k % group_size]
        if bad:
            raise ValueError(
                f"group_size={group_size} does not divide the input width of {bad[:3]}; choose a group size that "
                "divides it or skip those layers"
            )
    return run_pipeline(model, recipe, inplace=inplace)
