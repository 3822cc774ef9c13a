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
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .batches import eval_mode
from .deferred import BATCHES_ATTR, CHOICES_ATTR, is_pending, mark_pending, recording, run_deferred_steps
from .distributed import merged_across_ranks
from .install import install_layers, plan_layers
from .meta_device import load_weights_file
from .nn import QuantModule, TensorQuantizer
from .nn.registry import warn_unhandled
from .recipe import FORMAT_VERSION, READABLE_VERSIONS, Recipe

__all__ = [
    "quantize",
    "recipe_of",
    "calibrate",
    "freeze",
    "save",
    "load",
    "quantized_layers",
    "is_frozen",
    "unfrozen_parts",
    "uncalibrated_quantizers",
    "needs_calibration",
    "RECIPE_ATTR",
]

RECIPE_ATTR = "quantpilot_recipe"
WEIGHTS_FILE = "model.safetensors"
MAP_FILE = "quantpilot.json"


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


def _copy_sharing_weights(model: nn.Module, recipe: Recipe) -> nn.Module:
    """A deep copy of `model` that shares, instead of copying, the weights the recipe turns into codes.

    Only for callers that freeze at once and whose steps never write those weights (see
    `quantpilot.algorithms.rtn.run_pipeline`): freezing drops the copy's reference, so the float
    weights exist once and the peak memory is the model plus its codes, not two models.
    """
    plan, _ = plan_layers(model, recipe)
    memo = {id(module.weight): module.weight for _, module, _, _, _ in plan if isinstance(module.weight, torch.Tensor)}
    return copy.deepcopy(model, memo)


def quantize(
    model: nn.Module, recipe: Recipe | str | None = None, *, inplace: bool = False, _share_weights: bool = False
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
    if quantized_layers(model) or is_pending(model):
        raise ValueError("this model is already quantized; pass the original float model to quantpilot.quantize")
    if inplace:
        target = model
    else:
        target = _copy_sharing_weights(model, recipe) if _share_weights else copy.deepcopy(model)
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
    warn_unhandled(target, recipe.skip, stacklevel=2)  # weights nothing quantizes are named, never skipped silently
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
    for name, module in layers:
        # The spec picks the storage: weight-only uint4/uint8 Linear/Embedding layers become packed layers.
        frozen = frozen_form(module, scale_dtype)
        if frozen is not module:
            model = replace_module(model, name, frozen)
    if recipe is not None and getattr(model, RECIPE_ATTR, None) is None:
        setattr(model, RECIPE_ATTR, recipe)  # the root itself was replaced
    for q in _static_quantizers(model):  # functional points (matmul, add) sit outside the layers
        q.fix_qparams()
    return model


def needs_calibration(model: nn.Module) -> bool:
    """True when `freeze` needs calibration batches first: static activation ranges, or steps that run on data.

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> qp.api.needs_calibration(qp.quantize(net)), qp.api.needs_calibration(qp.quantize(net, "w8a16"))
        (True, False)
    """
    if is_pending(model):
        recipe = recipe_of(model)
        return recipe.activations is not None and not recipe.dynamic or any(s.needs_data for s in recipe.steps)
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


def _layer_map(model: nn.Module) -> dict[str, dict[str, Any]]:
    out = {}
    for name, m in quantized_layers(model):
        q = m.input_quantizer
        out[name] = {
            "type": type(m).__name__,
            "weights": None if m.weight_spec is None else m.weight_spec.to_dict(),
            "activations": None if q.spec is None else q.spec.to_dict(),
            "dynamic": q.dynamic,
            "smoothed": getattr(m, "input_smoothing", None) is not None,
        }
        if hasattr(m, "saved_config"):
            # Layers a Recipe cannot express (packed int4, LLM.int8()) record what rebuilds them.
            out[name]["config"] = m.saved_config()
    return out


def _rebuildable_layer_types() -> dict[str, type[QuantModule]]:
    """QuantModule subclasses that `load` rebuilds from their saved entry, by class name.

    A layer type an algorithm creates and a Recipe cannot express defines a classmethod
    `from_saved(module, entry)` (an empty layer shaped as the saved one; `module` is what the
    recipe put at that name, `entry` the layer's saved map entry) and a method `saved_config()`
    (a JSON-ready dict stored in that entry under "config"). Found by walking the subclasses, so a
    new type needs no registration here; it only has to be imported (quantpilot imports its
    algorithms, which import their layers). A layer that shares another's tensors also defines
    `restore_ties(root)`, called once every saved layer is back in place.
    """
    found: dict[str, type[QuantModule]] = {}
    stack = list(QuantModule.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if callable(getattr(cls, "from_saved", None)) and callable(getattr(cls, "saved_config", None)):
            found[cls.__name__] = cls
    return found


def _rebuild_algorithm_layers(qmodel: nn.Module, saved_layers: dict[str, Any]) -> nn.Module:
    """Swap in, at each saved name whose type rebuilds itself, an empty layer of that type."""
    types = _rebuildable_layer_types()
    rebuilt = []
    for name, entry in saved_layers.items():
        cls = types.get((entry or {}).get("type")) if isinstance(entry, dict) else None
        if cls is None:
            continue
        try:
            current = qmodel.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"the saved layer {name!r} does not exist in this float model; load it onto the architecture "
                "it was saved from"
            ) from None
        layer = cls.from_saved(current, entry)
        rebuilt.append(layer)
        if name == "":
            qmodel = layer
        else:
            parent, _, child = name.rpartition(".")
            setattr(qmodel.get_submodule(parent), child, layer)
    for layer in rebuilt:
        # A layer reading another's tensors (a head tied to the token table) shares them again, so
        # the file's single copy fills both.
        if callable(getattr(layer, "restore_ties", None)):
            layer.restore_ties(qmodel)
    return qmodel


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


def save(model: nn.Module, directory: str | Path) -> Path:
    """Save a frozen model as safetensors plus a versioned JSON map (no pickle anywhere).

    Args:
        model: a frozen quantized model.
        directory: created if needed; existing quantpilot files in it are never overwritten.

    Returns:
        The directory.

    Example:
        >>> import tempfile, torch, quantpilot as qp
        >>> qm = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "w8a16"))
        >>> sorted(p.name for p in qp.save(qm, tempfile.mkdtemp()).iterdir())
        ['model.safetensors', 'quantpilot.json']
    """
    _check_model(model)
    if not quantized_layers(model):
        raise ValueError("this model is not quantized: quantize, calibrate and freeze it before saving")
    if not is_frozen(model):
        raise ValueError("the model is not frozen: call quantpilot.freeze(model) before quantpilot.save")
    directory = Path(directory)
    for fname in (WEIGHTS_FILE, MAP_FILE):
        if (directory / fname).exists():
            raise ValueError(f"{directory / fname} already exists; save into a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    recipe = getattr(model, RECIPE_ATTR, None)
    if recipe is None:
        raise ValueError("the model carries no recipe; quantize it with quantpilot.quantize")
    safetensors.torch.save_model(model, str(directory / WEIGHTS_FILE), metadata={"format": "quantpilot"})
    meta = {
        "format": "quantpilot",
        "format_version": FORMAT_VERSION,
        "quantpilot_version": __version__,
        "model_class": type(model).__name__,
        "recipe": recipe.to_dict(),
        "layers": _layer_map(model),
        # What the recipe's steps chose on the calibration data (AWQ alphas, smoothed layers), for the record.
        "choices": _jsonable(model.__dict__.get(CHOICES_ATTR) or {}),
    }
    (directory / MAP_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def load(float_model: nn.Module, directory: str | Path) -> nn.Module:
    """Rebuild a saved quantized model on a fresh float model of the same architecture.

    Args:
        float_model: the float model the saved one was made from (weights may be random; they
            are replaced). It is not modified.
        directory: what `quantpilot.save` wrote.

    Layers an algorithm made that the saved recipe cannot express (packed int4 weights from
    `quantpilot.algorithms.rtn` / `gptq`, LLM.int8() layers) are rebuilt by their own class: a
    `QuantModule` subclass with `from_saved(module, entry)` and `saved_config()` (see
    `_rebuildable_layer_types`), dispatched on the saved map's "type".

    `float_model` may be built on the meta device (`with torch.device("meta"):` or accelerate's
    `init_empty_weights()`): only the storage the file fills is allocated, and non-persistent
    buffers are recomputed by the model's Hugging Face `_init_weights` (see `quantpilot.meta_device`).

    Returns:
        The frozen quantized model; its outputs equal the saved model's bit for bit.

    Raises:
        ValueError: missing files, an unknown format or version, or a file from another model.

    Example:
        >>> import tempfile, torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> d = qp.save(qp.freeze(qp.quantize(net, "w8a16")), tempfile.mkdtemp())
        >>> qp.load(net, d)[0].is_frozen
        True
    """
    _check_model(float_model)
    directory = Path(directory)
    for fname in (WEIGHTS_FILE, MAP_FILE):
        if not (directory / fname).is_file():
            raise ValueError(
                f"{directory} has no {fname}: point quantpilot.load at a directory written by quantpilot.save"
            )
    try:
        meta = json.loads((directory / MAP_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{directory / MAP_FILE} is not valid JSON ({err}); the file is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != "quantpilot":
        raise ValueError(f"{directory / MAP_FILE} is not a quantpilot map")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"format_version {meta.get('format_version')!r} is not supported by this quantpilot "
            f"(it reads {list(READABLE_VERSIONS)}); save the model again with this version"
        )
    recipe = Recipe.from_dict(meta["recipe"])
    with warnings.catch_warnings():
        # quantize names the weights it leaves float; the saved model was warned about when it was made.
        warnings.filterwarnings("ignore", message=".*keep their weights in float")
        qmodel = quantize(float_model, recipe)
    if is_pending(qmodel):
        # Deferred steps (GPTQ, AWQ, SmoothQuant) chose the values the file holds; only the structure is rebuilt.
        del qmodel.__dict__[BATCHES_ATTR]
        qmodel = install_layers(qmodel, recipe)
    saved_layers = meta.get("layers") if isinstance(meta.get("layers"), dict) else {}
    qmodel = _rebuild_algorithm_layers(qmodel, saved_layers)
    for name, module in quantized_layers(qmodel):
        if (saved_layers.get(name) or {}).get("smoothed") and hasattr(module, "smooth"):
            module.input_smoothing = torch.ones(module.in_features)  # placeholder; the file holds the values
    layers = _layer_map(qmodel)
    if layers != meta.get("layers"):
        saved, here = set(meta.get("layers") or {}), set(layers)
        raise ValueError(
            "the saved model does not match this float model: layers only in the file "
            f"{sorted(saved - here)[:5]}, only in the model {sorted(here - saved)[:5]}; "
            "load it onto the architecture it was saved from"
        )
    for _, module in quantized_layers(qmodel):
        module.store_weight_as_integers()  # the integer layout; values come from the file
    try:
        with safetensors.safe_open(str(directory / WEIGHTS_FILE), framework="pt") as f:
            for q in _static_quantizers(qmodel):
                q.scale = f.get_tensor(f"{q.qualname}.scale")
                q.zero_point = f.get_tensor(f"{q.qualname}.zero_point")
        missing, unexpected = load_weights_file(qmodel, str(directory / WEIGHTS_FILE))  # meta models: assigned
    except (RuntimeError, OSError, safetensors.SafetensorError) as err:
        raise ValueError(f"{directory / WEIGHTS_FILE} does not fit this model or is damaged: {err}") from None
    if missing or unexpected:
        raise ValueError(
            f"the saved tensors do not match this model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return qmodel
