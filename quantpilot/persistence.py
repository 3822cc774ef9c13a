"""`save` and `load`: a frozen model as safetensors plus a small versioned JSON map; loading never unpickles.

Example:
    >>> import tempfile, torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> d = save(qp.freeze(qp.quantize(net, "w8a16")), tempfile.mkdtemp())
    >>> torch.equal(load(net, d)[0].weight_codes(), qp.freeze(qp.quantize(net, "w8a16"))[0].weight_codes())
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from . import __version__
from .api import RECIPE_ATTR, _check_model, _static_quantizers, is_frozen, quantize, quantized_layers
from .atomic import atomic_directory
from .deferred import BATCHES_ATTR, CHOICES_ATTR, is_pending
from .install import install_layers
from .load_checks import (
    check_layer_entries,
    check_map,
    check_tensor_layout,
    check_values,
    read_header,
    tensor_checksums,
    verify_checksums,
)
from .meta_device import load_weights_file
from .nn import QuantModule
from .recipe import FORMAT_VERSION, READABLE_VERSIONS, Recipe

__all__ = ["save", "load", "WEIGHTS_FILE", "MAP_FILE", "SHARD_INDEX", "layer_map", "map_record", "weight_files"]

WEIGHTS_FILE = "model.safetensors"
MAP_FILE = "quantpilot.json"
# A model written in shards (`quantpilot.streaming`): Hugging Face's index, {"weight_map": {tensor: file}}.
SHARD_INDEX = "model.safetensors.index.json"


def layer_map(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The saved map's "layers" entry of a quantized model: each layer's type, specs and rebuild config.

    Example:
        >>> import torch, quantpilot as qp
        >>> list(layer_map(qp.quantize(torch.nn.Sequential(torch.nn.Linear(2, 2)), "w8a16")))
        ['0']
    """
    return _layer_map(model)


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
        directory: created if needed; existing quantpilot files in it are never overwritten, and a
            symbolic link in their place is refused. The files appear only whole (see `quantpilot.atomic`).

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
        if os.path.lexists(directory / fname):
            what = "is a symbolic link" if (directory / fname).is_symlink() else "already exists"
            raise ValueError(f"{directory / fname} {what}; save into a new or empty directory")
    recipe = getattr(model, RECIPE_ATTR, None)
    if recipe is None:
        raise ValueError("the model carries no recipe; quantize it with quantpilot.quantize")
    # Both files are written in a hidden folder beside `directory`, then appear at once (a new
    # folder is renamed into place; into an existing one the map moves last): an interrupted save
    # leaves nothing that blocks a rerun or that `load` would misread.
    with atomic_directory(directory, last=(MAP_FILE,)) as staging:
        _write_files(model, recipe, staging)
    return directory


def _write_files(model: nn.Module, recipe: Recipe, directory: Path) -> None:
    safetensors.torch.save_model(model, str(directory / WEIGHTS_FILE), metadata={"format": "quantpilot"})
    meta = map_record(
        type(model).__name__,
        recipe,
        _layer_map(model),
        model.__dict__.get(CHOICES_ATTR) or {},
        tensor_checksums(model.state_dict()),
    )
    (directory / MAP_FILE).write_text(json.dumps(meta, indent=2))


def map_record(
    model_class: str, recipe: Recipe, layers: dict[str, Any], choices: dict[str, Any], checksums: dict[str, str]
) -> dict[str, Any]:
    """The JSON map `save` writes (a sharded writer assembles `layers` and `checksums` block by block).

    Example:
        >>> import quantpilot as qp
        >>> map_record("Net", qp.Recipe.preset("w8a16"), {}, {}, {})["format"]
        'quantpilot'
    """
    return {
        "format": "quantpilot",
        "format_version": FORMAT_VERSION,
        "quantpilot_version": __version__,
        "model_class": model_class,
        "recipe": recipe.to_dict(),
        "layers": layers,
        # What the recipe's steps chose on the calibration data (AWQ alphas, smoothed layers), for the record.
        "choices": _jsonable(choices),
        # sha256 of each tensor's bytes: `load` refuses a file whose data changed under an intact header.
        "checksums": checksums,
    }


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a saved model: `model.safetensors`, or the shards its index names.

    Raises:
        ValueError: neither is there, or the index is damaged or names a file outside the folder.

    Example:
        >>> import tempfile
        >>> weight_files(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: ... has no model.safetensors: point quantpilot.load at a directory written by quantpilot.save
    """
    directory = Path(directory)
    if (directory / WEIGHTS_FILE).is_file() or not (directory / SHARD_INDEX).is_file():
        if not (directory / WEIGHTS_FILE).is_file():
            raise ValueError(
                f"{directory} has no {WEIGHTS_FILE}: point quantpilot.load at a directory written by quantpilot.save"
            )
        return [directory / WEIGHTS_FILE]
    try:
        weight_map = json.loads((directory / SHARD_INDEX).read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ValueError(f"{directory / SHARD_INDEX} is not a shard index; the file is damaged") from None
    for name in names:
        # Plain file names in this folder only: a damaged or hostile index never points elsewhere.
        if not isinstance(name, str) or Path(name).name != name or not (directory / name).is_file():
            raise ValueError(f"{directory / SHARD_INDEX} names the shard {name!r}, which is not a file in {directory}")
    return [directory / name for name in names]


def _read_map(directory: Path) -> dict[str, Any]:
    """The saved JSON map, checked: both files present, valid JSON, a quantpilot map of a readable version."""
    if not (directory / MAP_FILE).is_file():
        raise ValueError(
            f"{directory} has no {MAP_FILE}: point quantpilot.load at a directory written by quantpilot.save"
        )
    weight_files(directory)
    try:
        meta = json.loads((directory / MAP_FILE).read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{directory / MAP_FILE} is not UTF-8 text; the file is damaged") from None
    except RecursionError:
        raise ValueError(
            f"{directory / MAP_FILE} is nested too deep to be a quantpilot map; the file is damaged"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{directory / MAP_FILE} is not valid JSON ({err}); the file is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != "quantpilot":
        raise ValueError(f"{directory / MAP_FILE} is not a quantpilot map")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(
            f"format_version {meta.get('format_version')!r} is not supported by this quantpilot "
            f"(it reads {list(READABLE_VERSIONS)}); save the model again with this version"
        )
    check_map(meta, directory / MAP_FILE)
    return meta


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
    meta = _read_map(directory)
    check_layer_entries(float_model, meta["layers"])  # before anything is built from the map's sizes
    try:
        recipe = Recipe.from_dict(meta["recipe"])
    except (TypeError, KeyError, AttributeError) as err:
        raise ValueError(f"{directory / MAP_FILE} holds a damaged recipe: {err}") from None
    # quantize names the weights it leaves float; the saved model was warned about when it was made.
    qmodel = quantize(float_model, recipe, _warn_unhandled=False)
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
    _fill_from_file(qmodel, directory, meta)
    check_values(qmodel)  # codes, zero points and scales the spec allows, before anything runs
    return qmodel


def _fill_from_file(qmodel: nn.Module, directory: Path, meta: dict[str, Any]) -> None:
    """Fill the empty quantized layout from the safetensors file(s), after checking headers and checksums."""
    files = weight_files(directory)
    for path in files:
        header, data_start = read_header(path)
        check_tensor_layout(qmodel, header, path)  # loading would cast a wrong dtype silently
        verify_checksums(meta.get("checksums") or {}, header, data_start, path)
    if len(files) > 1:
        missing, unexpected = _fill_from_shards(qmodel, files)
    else:
        missing, unexpected = _fill_from_one(qmodel, files[0])
    _check_filled(directory, meta, missing, unexpected)


def _fill_from_one(qmodel: nn.Module, path: Path) -> tuple[list[str], list[str]]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            for q in _static_quantizers(qmodel):
                q.scale = f.get_tensor(f"{q.qualname}.scale")
                q.zero_point = f.get_tensor(f"{q.qualname}.zero_point")
        return load_weights_file(qmodel, str(path))  # meta models: assigned
    except (RuntimeError, OSError, safetensors.SafetensorError) as err:
        raise ValueError(f"{path} does not fit this model or is damaged: {err}") from None


def _fill_from_shards(qmodel: nn.Module, files: list[Path]) -> tuple[list[str], list[str]]:
    """Every shard's tensors assigned at once (a meta model: the file's storage, ties and buffers restored)."""
    from .meta_device import _materialise_derived_buffers, _retie, _tie_groups, has_meta_tensors

    state: dict[str, torch.Tensor] = {}
    try:
        for path in files:
            state.update(safetensors.torch.load_file(str(path)))
        for q in _static_quantizers(qmodel):
            q.scale, q.zero_point = state.pop(f"{q.qualname}.scale"), state.pop(f"{q.qualname}.zero_point")
        meta = has_meta_tensors(qmodel)
        groups = _tie_groups(qmodel)
        missing, unexpected = qmodel.load_state_dict(state, strict=False, assign=meta)
    except (RuntimeError, OSError, KeyError, safetensors.SafetensorError) as err:
        names = [p.name for p in files[:3]]
        raise ValueError(f"the shards {names} do not fit this model or are damaged: {err}") from None
    if meta:
        refilled = _retie(qmodel, groups, set(state))
        _materialise_derived_buffers(qmodel)
    else:  # a tied tensor is stored once; copying into it filled every name that shares it
        refilled = {n for names in groups if set(names) & set(state) for n in names}
    return sorted(set(missing) - refilled), sorted(unexpected)


def _check_filled(directory: Path, meta: dict[str, Any], missing: list[str], unexpected: list[str]) -> None:
    unpacked = [k for k in missing if k.endswith(".weight_packed") and k.replace("_packed", "_int") in unexpected]
    if unpacked:
        # Format 1 stored a recipe layer's 4-bit codes one per byte; they are packed two per byte now.
        raise ValueError(
            f"{directory} stores 4-bit codes one per byte (quantpilot format {meta.get('format_version')}, e.g. "
            f"{unpacked[0].removesuffix('.weight_packed')}); this version packs them: quantize and save the model again"
        )
    if missing or unexpected:
        raise ValueError(
            f"the saved tensors do not match this model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
