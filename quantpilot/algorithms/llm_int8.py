"""LLM.int8() (Dettmers et al., 2022): every Linear becomes vector-wise int8 with float outlier features.

No calibration: the outlier columns are found per batch at run time (any |x| >= threshold), so
the method holds however the activation outliers move between inputs. See
`quantpilot.nn.llm_int8_linear` for the arithmetic.

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> qnet = qp.algorithms.llm_int8(net, threshold=6.0)
    >>> type(qnet[0]).__name__, qp.is_frozen(qnet)
    ('LLMInt8Linear', True)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..api import freeze, quantize, quantized_layers
from ..nn.llm_int8_linear import LLMInt8Linear
from ..recipe import OUTPUT_HEADS, Recipe
from ..steps import LLMInt8

__all__ = ["llm_int8", "outlier_fraction", "reset_outlier_stats"]


def llm_int8(
    model: nn.Module,
    threshold: float = 6.0,
    *,
    skip: Sequence[str] = OUTPUT_HEADS,
    inplace: bool = False,
) -> nn.Module:
    """Replace every Linear (and GPT-2 `Conv1D`) by an `LLMInt8Linear`.

    Args:
        model: a float model (left unchanged unless `inplace`).
        threshold: input features with any |x| >= threshold run in float (6.0 in the paper;
            0 runs everything in float against the int8-stored weight).
        skip: fnmatch patterns of layers kept in float; the output head by default, as
            bitsandbytes' transformers integration does.
        inplace: convert `model` itself.

    Returns:
        The converted model (frozen: weights are int8 codes). `outlier_fraction(model)` reports how
        many input columns ran in float.

    Raises:
        ValueError: a bad threshold, or no Linear layer left to convert.
        TypeError: `model` is not an `nn.Module`.

    Example:
        >>> import torch, quantpilot as qp
        >>> qnet = qp.algorithms.llm_int8(torch.nn.Sequential(torch.nn.Linear(4, 4)), threshold=0.0)
        >>> float(qnet[0].threshold)
        0.0
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not float(threshold) >= 0.0:
        raise ValueError(f"threshold must be a number >= 0 (6.0 in the paper), got {threshold!r}")
    if isinstance(skip, str):
        raise TypeError(f"skip must be a list of fnmatch patterns, got the string {skip!r}")
    if quantized_layers(model):
        raise ValueError("this model is already quantized; pass the original float model to llm_int8")
    # The layers are LLM.int8()'s own (int8 weights per output channel, outlier columns decided at run time),
    # so the recipe's weight scheme stays empty and the step does the whole job.
    recipe = Recipe(
        weights=None,
        activations=None,
        module_types=("Linear", "Conv1D"),
        skip=tuple(skip),
        steps=(LLMInt8(threshold=float(threshold)),),
        name="llm-int8",
    )
    return freeze(quantize(model, recipe, inplace=inplace))


def _layers(model: nn.Module) -> list[LLMInt8Linear]:
    layers = [m for m in model.modules() if isinstance(m, LLMInt8Linear)]
    if not layers:
        raise ValueError("the model has no LLM.int8() layer: convert it with quantpilot.algorithms.llm_int8 first")
    return layers


def outlier_fraction(model: nn.Module, *, per_layer: bool = False) -> float | dict[str, float]:
    """Fraction of input columns that ran in float, over every LLM.int8() layer and batch seen.

    Args:
        model: a model returned by `llm_int8`.
        per_layer: return `{layer name: fraction}` instead of the overall fraction.

    Returns:
        The fraction in [0, 1] (column counts summed over layers), or a dict per layer.

    Example:
        >>> import torch, quantpilot as qp
        >>> qnet = qp.algorithms.llm_int8(torch.nn.Sequential(torch.nn.Linear(4, 2)))
        >>> _ = qnet(torch.tensor([[0.0, 9.0, 0.0, 0.0]]))
        >>> qp.algorithms.outlier_fraction(qnet)
        0.25
    """
    layers = _layers(model)
    if per_layer:
        return {name: m.outlier_fraction for name, m in model.named_modules() if isinstance(m, LLMInt8Linear)}
    seen = sum(m.columns_seen for m in layers)
    return sum(m.outlier_columns for m in layers) / seen if seen else 0.0


def reset_outlier_stats(model: nn.Module) -> None:
    """Zero the outlier counts of every LLM.int8() layer (e.g. before measuring on new data).

    Example:
        >>> import torch, quantpilot as qp
        >>> qnet = qp.algorithms.llm_int8(torch.nn.Sequential(torch.nn.Linear(4, 2)))
        >>> _ = qnet(torch.full((1, 4), 8.0)); reset_outlier_stats(qnet); outlier_fraction(qnet)
        0.0
    """
    for m in _layers(model):
        m.reset_outlier_stats()
