"""Which float module types quantpilot can quantize, and the quantized module that replaces each.

Types are keyed by their fully qualified class name, so optional libraries (transformers'
`Conv1D`) are supported without importing them. Adding a type is one `register` call; the
model walker never changes.

Example:
    >>> import torch
    >>> lookup(torch.nn.Linear(2, 2)).name
    'Linear'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .conv import QuantConv1d, QuantConv2d, QuantConv3d
from .embedding import QuantEmbedding
from .linear import QuantLinear

__all__ = ["QuantizableType", "register", "lookup", "registered_names"]


@dataclass(frozen=True)
class QuantizableType:
    """A float module type, its short name (used in recipes) and the factory building its quantized form.

    `has_input` is False for layers whose input is not a float activation (embeddings).
    """

    qualname: str
    name: str
    factory: Callable[..., nn.Module]
    has_input: bool = True


_REGISTRY: dict[str, QuantizableType] = {}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(qualname: str, name: str, factory: Callable[..., nn.Module], has_input: bool = True) -> None:
    """Make a float module type quantizable.

    Args:
        qualname: fully qualified class name, e.g. "torch.nn.modules.linear.Linear".
        name: the short name recipes use in `module_types`.
        factory: `factory(float_module, weight_spec=..., weight_calibrator=..., input_quantizer=...)`.
        has_input: whether the layer's input is an activation to quantize.

    Example:
        >>> register("torch.nn.modules.linear.Linear", "Linear", QuantLinear.from_float)
    """
    _REGISTRY[qualname] = QuantizableType(qualname, name, factory, has_input)


def lookup(module: nn.Module) -> QuantizableType | None:
    """The registry entry for exactly this module's type (subclasses may change `forward`, so no isinstance).

    Example:
        >>> import torch
        >>> lookup(torch.nn.ReLU()) is None
        True
    """
    return _REGISTRY.get(_qualname(type(module)))


def registered_names() -> list[str]:
    """Short names of every quantizable type, for recipes and error messages.

    Example:
        >>> "Conv2d" in registered_names()
        True
    """
    return sorted({entry.name for entry in _REGISTRY.values()})


register(_qualname(nn.Linear), "Linear", QuantLinear.from_float)
register(_qualname(nn.Conv1d), "Conv1d", QuantConv1d.from_float)
register(_qualname(nn.Conv2d), "Conv2d", QuantConv2d.from_float)
register(_qualname(nn.Conv3d), "Conv3d", QuantConv3d.from_float)
register(_qualname(nn.Embedding), "Embedding", QuantEmbedding.from_float, has_input=False)
register("transformers.pytorch_utils.Conv1D", "Conv1D", QuantLinear.from_float)
