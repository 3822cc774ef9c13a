"""Which float module types quantpilot can quantize, and the quantized module that replaces each.

This is the one decision of what is quantizable: presets (`quantpilot.quantize`), the methods
(`quantpilot.algorithms`), `load` and the engines all ask `lookup` (or the walkers built on it,
`quantizable_layers` and `linear_layers`), so a layer quantized by one is never skipped by another.

Types are keyed by their fully qualified class name, so optional libraries (transformers'
`Conv1D`) are supported without importing them. Adding a type is one `register` call; the
model walker never changes.

Example:
    >>> import torch
    >>> lookup(torch.nn.Linear(2, 2)).name
    'Linear'
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch

from torch import nn

from .conv import QuantConv1d, QuantConv2d, QuantConv3d
from .embedding import QuantEmbedding
from .experts import EXPERTS_TYPE, QuantExperts, is_experts_class
from .linear import QuantLinear

__all__ = [
    "QuantizableType",
    "register",
    "lookup",
    "registered_names",
    "LINEAR_TYPES",
    "quantizable_layers",
    "linear_layers",
    "is_linear",
    "unhandled_layers",
    "warn_unhandled",
]

# Short names of the layers that compute `x @ W.T + b` (GPT-2's Conv1D stores W transposed).
LINEAR_TYPES = ("Linear", "Conv1D")

# What a registered layer computes lives in these methods; a subclass overriding one may compute
# something else, so only a subclass that inherits them (or is registered itself) counts.
_COMPUTE_METHODS = ("forward", "_conv_forward")


@dataclass(frozen=True)
class QuantizableType:
    """A float module type, its short name (used in recipes) and the factory building its quantized form.

    `has_input` is False for layers whose input is not a float activation (embeddings) or is not
    quantized (MoE experts). A recipe selecting the type `selected_with` selects this one too.
    """

    qualname: str
    name: str
    factory: Callable[..., nn.Module]
    has_input: bool = True
    selected_with: str | None = None


_REGISTRY: dict[str, QuantizableType] = {}
# Subclasses of registered types that must stay float, with the reason a warning gives.
_EXCLUDED: dict[str, str] = {}
# Types recognised by a test on the class rather than by name (transformers' ~60 experts classes).
_MATCHERS: list[tuple[Callable[[type], bool], QuantizableType]] = []


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(qualname: str, name: str, factory: Callable[..., nn.Module], has_input: bool = True) -> None:
    """Make a float module type (and its subclasses that keep its `forward`) quantizable.

    Register a subclass that overrides `forward` only when its override computes the same thing
    as the base (Falcon's `FalconLinear` computes `x @ W.T + b` by hand): registering it vouches
    for that.

    Args:
        qualname: fully qualified class name, e.g. "torch.nn.modules.linear.Linear".
        name: the short name recipes use in `module_types`.
        factory: `factory(float_module, weight_spec=..., weight_calibrator=..., input_quantizer=...)`.
        has_input: whether the layer's input is an activation to quantize.

    Example:
        >>> register("torch.nn.modules.linear.Linear", "Linear", QuantLinear.from_float)
    """
    _EXCLUDED.pop(qualname, None)
    _REGISTRY[qualname] = QuantizableType(qualname, name, factory, has_input)


def _exclude(qualname: str, reason: str) -> None:
    _REGISTRY.pop(qualname, None)
    _EXCLUDED[qualname] = reason


def _match(cls: type) -> tuple[QuantizableType | None, str | None]:
    """The entry of the most-derived registered class in `cls`'s MRO, or None with the reason."""
    for base in cls.__mro__:
        qualname = _qualname(base)
        if qualname in _EXCLUDED:
            return None, _EXCLUDED[qualname]
        entry = _REGISTRY.get(qualname)
        if entry is None:
            continue
        # Decision: a subclass that overrides how the layer computes is not replaced by the base's
        # quantized form, which would silently compute the base's function instead (routers that
        # return tuples, grouped or decoupled linears in transformers do this). It stays float
        # and is named in `warn_unhandled`'s warning; `register` it if its math is the base's.
        for method in _COMPUTE_METHODS:
            if getattr(cls, method, None) is not getattr(base, method, None):
                return None, f"a {entry.name} subclass overriding {method}"
        return entry, None
    for test, entry in _MATCHERS:
        if test(cls):
            return entry, None
    return None, None


def lookup(module: nn.Module) -> QuantizableType | None:
    """The registry entry for this module: its type's or that of its most-derived registered base.

    Subclasses count (Falcon's `FalconLinear` is a `Linear`) as long as they inherit the base's
    `forward`; one that overrides it returns None unless it is registered itself.

    Example:
        >>> import torch
        >>> lookup(torch.nn.ReLU()) is None
        True
        >>> class MyLinear(torch.nn.Linear):
        ...     pass
        >>> lookup(MyLinear(2, 2)).name
        'Linear'
    """
    return _match(type(module))[0]


def registered_names() -> list[str]:
    """Short names of every quantizable type, for recipes and error messages.

    Example:
        >>> "Conv2d" in registered_names()
        True
    """
    return sorted({entry.name for entry in [*_REGISTRY.values(), *(e for _, e in _MATCHERS)]})


def _skipped(name: str, skip: Sequence[str]) -> bool:
    if isinstance(skip, str):
        raise TypeError(f"skip is a sequence of patterns, e.g. ({skip!r},), not one string")
    return any(fnmatch(name, p) for p in skip)


def quantizable_layers(
    model: nn.Module, module_types: Sequence[str] | None = None, skip: Sequence[str] = ()
) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs `lookup` accepts, in model order.

    Args:
        model: a float model.
        module_types: short names to keep (e.g. ("Linear", "Conv1D")); None keeps every registered type.
        skip: fnmatch patterns of qualified names to leave out.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Conv1d(2, 2, 1))
        >>> [n for n, _ in quantizable_layers(net, skip=("2",))]
        ['0']
    """
    if isinstance(module_types, str):
        raise TypeError(f"module_types is a sequence of names, e.g. ({module_types!r},), not one string")
    found = []
    for name, module in model.named_modules():
        entry = lookup(module)
        if entry is None or (module_types is not None and entry.name not in module_types):
            continue
        if not _skipped(name, skip):
            found.append((name, module))
    return found


def linear_layers(model: nn.Module, skip: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """The Linear layers (subclasses and GPT-2's `Conv1D` included) outside `skip`, in model order.

    Example:
        >>> import torch
        >>> [n for n, _ in linear_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Conv1d(2, 2, 1)))]
        ['0']
    """
    return quantizable_layers(model, LINEAR_TYPES, skip)


def is_linear(module: nn.Module) -> bool:
    """True for a layer computing `x @ W.T + b` that quantpilot quantizes (`LINEAR_TYPES`).

    Example:
        >>> import torch
        >>> is_linear(torch.nn.Linear(2, 2)), is_linear(torch.nn.Conv2d(2, 2, 1))
        (True, False)
    """
    entry = lookup(module)
    return entry is not None and entry.name in LINEAR_TYPES


def _holds_weight(param: nn.Parameter) -> bool:
    # A matrix or stack of matrices (a 2-D weight, MoE experts' 3-D tensors); tensors with a leading
    # 1 (ViT's position embeddings, class tokens) are added to activations, not multiplied.
    return param.dim() >= 2 and param.shape[0] > 1


def unhandled_layers(model: nn.Module, skip: Sequence[str] = ()) -> tuple[list[str], float]:
    """Modules holding weights no registry entry quantizes, and those weights' share of the model's.

    Norms and biases (1-D) are not counted: no method quantizes them. Modules matching `skip`
    were left float by choice and are not listed either.

    Returns:
        Descriptions "name (Type)" or "name (Type: why)", in model order, and the share (0..1) of
        the model's parameter elements they hold.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GRU(2, 2))
        >>> unhandled_layers(net)[0]
        ['1 (GRU)']
    """
    seen: set[int] = set()
    names, left = [], 0
    for name, module in model.named_modules():
        entry, why = _match(type(module))
        if entry is not None or _skipped(name, skip):
            continue
        held = [p for p in module.parameters(recurse=False) if _holds_weight(p) and id(p) not in seen]
        if not held:
            continue
        seen.update(id(p) for p in held)
        left += sum(p.numel() for p in held)
        names.append(f"{name or '<root>'} ({type(module).__name__}{': ' + why if why else ''})")
    total = sum(p.numel() for p in model.parameters())
    return names, (left / total if total else 0.0)


def warn_unhandled(model: nn.Module, skip: Sequence[str] = (), stacklevel: int = 2) -> None:
    """Warn once, naming up to 5 modules whose weights stay float because nothing quantizes them.

    Example:
        >>> import torch, warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_unhandled(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GRU(4, 4)))
        >>> "1 (GRU)" in str(caught[0].message)
        True
    """
    names, share = unhandled_layers(model, skip)
    if not names:
        return
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    warnings.warn(
        f"{len(names)} module(s) keep their weights in float because quantpilot has no quantized form for "
        f"them: {', '.join(names[:5])}{more} ({share:.1%} of the model's weights); register their type with "
        "quantpilot.nn.register if it computes as a registered one, or add them to the recipe's skip",
        stacklevel=stacklevel + 1,
    )


register(_qualname(nn.Linear), "Linear", QuantLinear.from_float)
register(_qualname(nn.Conv1d), "Conv1d", QuantConv1d.from_float)
register(_qualname(nn.Conv2d), "Conv2d", QuantConv2d.from_float)
register(_qualname(nn.Conv3d), "Conv3d", QuantConv3d.from_float)
register(_qualname(nn.Embedding), "Embedding", QuantEmbedding.from_float, has_input=False)
register("transformers.pytorch_utils.Conv1D", "Conv1D", QuantLinear.from_float)
# Falcon's FalconLinear overrides forward only to spell out `input @ weight.T + bias`: the same math.
register("transformers.models.falcon.modeling_falcon.FalconLinear", "Linear", QuantLinear.from_float)
# nn.MultiheadAttention reads its out_proj's weight and bias directly and never calls the layer, so a
# quantized out_proj would neither quantize anything nor see calibration data.
# transformers' MoE experts (3-D stacks of per-expert Linear weights): quantized wherever Linear layers are.
_MATCHERS.append(
    (is_experts_class, QuantizableType("transformers experts", EXPERTS_TYPE, QuantExperts.from_float, False, "Linear"))
)
_exclude(_qualname(nn.modules.linear.NonDynamicallyQuantizableLinear), "read by nn.MultiheadAttention, never called")
