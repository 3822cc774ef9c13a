"""The model-level path: `quantize` -> `calibrate` -> `freeze` -> `save` / `load`, and `summary`.

Example:
    >>> import torch, quantpilot as qp
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> qmodel = qp.quantize(model, "int8-static")
    >>> with qp.calibrate(qmodel):
    ...     for _ in range(4):
    ...         _ = qmodel(torch.randn(16, 8))
    >>> qp.freeze(qmodel).get_submodule("0").is_frozen
    True
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .batches import call_model, eval_mode
from .deferred import (
    FAILED_ATTR,
    is_pending,
    mark_failed,
    mark_pending,
    recipe_needs_batches,
    recording,
    run_deferred_steps,
)
from .distributed import check_ranks_in_step, merged_across_ranks
from .install import check_plan, install_layers, plan_layers
from .nn import QuantModule, TensorQuantizer
from .nn.registry import warn_unhandled
from .recipe import Recipe

__all__ = [
    "quantize",
    "recipe_of",
    "calibrate",
    "freeze",
    "quantized_layers",
    "is_frozen",
    "unfrozen_parts",
    "uncalibrated_quantizers",
    "needs_calibration",
    "run_pipeline",
    "RECIPE_ATTR",
]

RECIPE_ATTR = "quantpilot_recipe"


def _as_recipe(recipe: Recipe | str | None) -> Recipe:
    if recipe is None:
        return Recipe.preset("int8-static")
    if isinstance(recipe, str):
        return Recipe.preset(recipe)
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a quantpilot.Recipe or a preset name, got {type(recipe).__name__}")
    return recipe


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def quantized_layers(model: nn.Module) -> list[tuple[str, QuantModule]]:
    """The quantized layers of a model with their qualified names.

    Example:
        >>> import torch, quantpilot as qp
        >>> [n for n, _ in qp.quantized_layers(qp.quantize(torch.nn.Sequential(torch.nn.Linear(2, 2))))]
        ['0']
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QuantModule)]


def _static_quantizers(model: nn.Module) -> list[TensorQuantizer]:
    return [m for m in model.modules() if isinstance(m, TensorQuantizer) and m.needs_calibration]


def _copy_sharing_weights(model: nn.Module, plan: list) -> nn.Module:
    """A deep copy of `model` that shares, instead of copying, the weights the planned layers turn into codes.

    Only for `run_pipeline`, which freezes at once and whose steps never write those weights: freezing
    drops the copy's reference, so the float weights exist once and the peak memory is the model plus
    its codes, not two models.
    """
    # getattr: MoE experts modules hold 3-D stacks and no `.weight`; they are copied.
    weights = [getattr(module, "weight", None) for _, module, _, _, _ in plan]
    memo = {id(w): w for w in weights if isinstance(w, torch.Tensor)}
    return copy.deepcopy(model, memo)


def quantize(
    model: nn.Module,
    recipe: Recipe | str | None = None,
    *,
    inplace: bool = False,
    _share_weights: bool = False,
    _warn_unhandled: bool = True,
) -> nn.Module:
    """Replace every layer the recipe selects by its quantized counterpart.

    The model is walked once; each layer's type is looked up in `quantpilot.nn`'s registry, so
    new layer types never change this function.

    Args:
        model: a float PyTorch model.
        recipe: a `Recipe`, a preset name ("int8-static", "int8-dynamic", "w8a16", "w4a16-g128",
            "fp8") or None for "int8-static".
        inplace: modify `model` itself instead of a copy (spares memory on big models).

    Returns:
        The quantized model (a copy unless `inplace`).

    Raises:
        ValueError: the model has no layer the recipe quantizes, or is already quantized.

    Example:
        >>> import torch, quantpilot as qp
        >>> qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "w8a16")[0].__class__.__name__
        'QuantLinear'
    """
    _check_model(model)
    recipe = _as_recipe(recipe)
    if FAILED_ATTR in model.__dict__:
        raise ValueError(model.__dict__[FAILED_ATTR])
    if quantized_layers(model) or is_pending(model):
        raise ValueError("this model is already quantized; pass the original float model to quantpilot.quantize")
    # Everything the recipe needs is checked on the model as given, before anything changes (inplace too).
    given_plan = plan_layers(model, recipe)[0]
    check_plan(given_plan)
    if inplace:
        target = model
    else:
        target = _copy_sharing_weights(model, given_plan) if _share_weights else copy.deepcopy(model)
    for step in recipe.steps:
        target = step.prepare(target, recipe)
    if "add" in recipe.ops:
        # Traced first, on float modules: the tracer then sees plain Linear/Conv calls.
        from .functional_points import install_add_points

        target = install_add_points(target, recipe)
    plan, seen_types = plan_layers(target, recipe)
    if not plan and not quantized_layers(target) and not any(step.deferred for step in recipe.steps):
        raise ValueError(
            f"the model has no layer this recipe quantizes: it quantizes {list(recipe.module_types)} "
            f"(skip={list(recipe.skip)}), the model holds {sorted(seen_types)}; "
            "adjust the recipe's module_types or skip patterns"
        )
    if _warn_unhandled:  # weights nothing quantizes are named, never skipped silently (load already warned once)
        warn_unhandled(target, recipe.skip, stacklevel=2)
    if any(step.deferred for step in recipe.steps):
        # Steps that act inside freeze (GPTQ, AWQ, SmoothQuant) see the float model and the batches
        # calibrate records; the quantizers go in once they ran.
        mark_pending(target)
    else:
        target = install_layers(target, recipe, plan)
    setattr(target, RECIPE_ATTR, recipe)
    return target


def recipe_of(model: nn.Module) -> Recipe:
    """The `Recipe`, steps included, that rebuilds a quantized model through quantize / calibrate / freeze.

    Example:
        >>> import torch, quantpilot as qp
        >>> qm = qp.algorithms.rtn(torch.nn.Sequential(torch.nn.Linear(64, 8)), bits=8, group_size=None)
        >>> qp.recipe_of(qm).name
        'rtn-w8a16-per-channel'
    """
    _check_model(model)
    recipe = getattr(model, RECIPE_ATTR, None)
    if not isinstance(recipe, Recipe):
        raise ValueError("this model was not quantized by quantpilot: it carries no recipe")
    return recipe


def _show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextlib.contextmanager
def calibrate(model: nn.Module, *, progress: bool | None = None) -> Iterator[nn.Module]:
    """Collect activation statistics while the block runs data through the model.

    On entry every static quantizer starts feeding its calibrator and the model runs in float,
    in eval mode, under `torch.no_grad`. On exit (also on error) collection stops, the progress
    hook is removed and every module's train/eval mode is restored. Statistics accumulate over
    several `calibrate` blocks until `freeze`.

    Args:
        model: a model returned by `quantpilot.quantize`.
        progress: show a batch counter (default: only on an interactive terminal outside CI).

    Yields:
        The model.

    Example:
        >>> import torch, quantpilot as qp
        >>> qmodel = qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)))
        >>> with qp.calibrate(qmodel) as m:
        ...     _ = m(torch.randn(2, 4))
    """
    _check_model(model)
    if is_pending(model):
        # The recipe's steps run inside freeze, on exactly the batches seen here.
        with recording(model), eval_mode(model), torch.no_grad():
            yield model
        return
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("this model is not quantized: call quantpilot.quantize(model, recipe) first")
    quantizers = _static_quantizers(model)
    # Layers a step stores frozen from the start (LLM.int8(), packed tables) are fine; fixed activation ranges
    # mean freeze already ran, and more data would change nothing.
    frozen = [q.qualname or "?" for q in quantizers if q.scale is not None]
    if frozen:
        raise ValueError(f"{frozen[:3]} are already frozen: calibrate before quantpilot.freeze, not after")
    if not quantizers:
        warnings.warn("nothing to calibrate: this recipe has dynamic or float activations", stacklevel=3)
    bar = tqdm(desc="calibrating", unit="batch", disable=not (_show_progress() if progress is None else progress))
    hook = model.register_forward_hook(lambda *_: bar.update(1))
    try:
        # Under torch.distributed the block's statistics are merged across ranks on exit, so every
        # rank freezes identical ranges; a no-op in one process.
        with merged_across_ranks(quantizers):
            for q in quantizers:
                q.start_collecting()
            with eval_mode(model), torch.no_grad():
                yield model
    finally:
        for q in quantizers:
            q.stop_collecting()
        hook.remove()
        bar.close()


def freeze(model: nn.Module) -> nn.Module:
    """Fix activation ranges from calibration and store weights as integers.

    Checks every layer first and changes nothing if one static layer was never calibrated.

    Args:
        model: a quantized model (calibrated, for static activations).

    Returns:
        The same model, frozen in place (weight-only uint4 / uint8 Linear and Embedding layers are
        replaced by packed `WeightOnlyLinear` / `WeightOnlyEmbedding`, see `quantpilot.nn.storage`).

    Example:
        >>> import torch, quantpilot as qp
        >>> qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "w8a16"))[0].weight_codes().dtype
        torch.int8
    """
    _check_model(model)
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(
            "freeze needs the real weights: the model is on the meta device; load its weights first "
            "(quantpilot.load fills a meta model from a saved quantized one)"
        )
    if is_pending(model):
        model = run_deferred_steps(model, recipe_of(model))
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("this model is not quantized: call quantpilot.quantize(model, recipe) first")
    if _static_quantizers(model):
        check_ranks_in_step()  # under torchrun: a rank still calibrating would otherwise wait forever
    missing = uncalibrated_quantizers(model)
    if missing:
        raise ValueError(
            f"{len(missing)} static layer input(s) saw no calibration data (e.g. {missing[:3]}): run batches through "
            "the model inside `with quantpilot.calibrate(model):` first, or skip those layers in the recipe"
        )
    from .install import replace_module
    from .nn.storage import frozen_form

    recipe = getattr(model, RECIPE_ATTR, None)
    # The packed weight-only layers' scale dtype is the recipe's (float16 unless it says bfloat16).
    scale_dtype = getattr(torch, getattr(recipe, "scale_dtype", "float16"))
    try:
        for name, module in layers:
            # The spec picks the storage: weight-only uint4/uint8 Linear/Embedding layers become packed layers.
            frozen = frozen_form(module, scale_dtype)
            if frozen is not module:
                model = replace_module(model, name, frozen)
    except BaseException as err:
        mark_failed(model, err)  # some layers frozen, some not: refuse to run rather than mix them silently
        raise
    if recipe is not None and getattr(model, RECIPE_ATTR, None) is None:
        setattr(model, RECIPE_ATTR, recipe)  # the root itself was replaced
    for q in _static_quantizers(model):  # functional points (matmul, add) sit outside the layers
        q.fix_qparams()
    return model


def run_pipeline(model: nn.Module, recipe: Recipe, calib_batches: Iterable[Any] = (), *, inplace: bool = False):
    """`quantize` -> `calibrate` on `calib_batches` -> `freeze`: what every one-shot method wrapper runs.

    Example:
        >>> import torch, quantpilot as qp
        >>> q = run_pipeline(torch.nn.Sequential(torch.nn.Linear(4, 4)), qp.Recipe(), [torch.randn(8, 4)])
        >>> qp.is_frozen(q)
        True
    """
    # Steps that only read the float weights let the copy share them (freeze replaces them at once);
    # SmoothQuant, AWQ and BatchNorm folding write into them, so those get a full copy.
    share = not inplace and all(step.reads_weights_only for step in recipe.steps)
    qmodel = quantize(model, recipe, inplace=inplace, _share_weights=share)
    batches = list(calib_batches)
    if batches:
        with calibrate(qmodel):
            for batch in batches:
                call_model(qmodel, batch)
    return freeze(qmodel)


def needs_calibration(model: nn.Module) -> bool:
    """True when `freeze` needs calibration batches first: static activation ranges, or steps that run on data.

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> qp.api.needs_calibration(qp.quantize(net)), qp.api.needs_calibration(qp.quantize(net, "w8a16"))
        (True, False)
    """
    if is_pending(model):
        return recipe_needs_batches(recipe_of(model))
    return bool(_static_quantizers(model))


def uncalibrated_quantizers(model: nn.Module) -> list[str]:
    """Names of static quantizers with neither a fixed range nor calibration statistics.

    Example:
        >>> import torch, quantpilot as qp
        >>> qp.api.uncalibrated_quantizers(qp.quantize(torch.nn.Sequential(torch.nn.Linear(2, 2))))
        ['0.input_quantizer']
    """
    return [
        q.qualname or "?"
        for q in _static_quantizers(model)
        if q.scale is None and (q.calibrator is None or not q.calibrator.has_data)
    ]


def unfrozen_parts(model: nn.Module) -> list[str]:
    """Names of layers whose weight is still float and of static inputs with no fixed range.

    Example:
        >>> import torch, quantpilot as qp
        >>> qp.unfrozen_parts(qp.quantize(torch.nn.Sequential(torch.nn.Linear(2, 2))))
        ['0', '0.input_quantizer']
    """
    weights = [name for name, m in quantized_layers(model) if m.weight_spec is not None and not m.is_frozen]
    inputs = [q.qualname or "?" for q in _static_quantizers(model) if q.scale is None]
    return weights + inputs


def is_frozen(model: nn.Module) -> bool:
    """True when every quantized weight is stored as integers and every static input range is fixed.

    Example:
        >>> import torch, quantpilot as qp
        >>> qp.is_frozen(qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(2, 2)), "w8a16")))
        True
    """
    return not unfrozen_parts(model)


def __getattr__(name: str) -> Any:
    # save / load live in quantpilot.persistence; `quantpilot.api.save` keeps working.
    if name in ("save", "load", "WEIGHTS_FILE", "MAP_FILE"):
        from . import persistence

        return getattr(persistence, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
