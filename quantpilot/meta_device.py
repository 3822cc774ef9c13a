"""Filling a quantized model whose float parts were built on the meta device from a saved file.

The usual way to load a large checkpoint builds the architecture without storage (`with
torch.device("meta"):`, or accelerate's `init_empty_weights()`) and lets the file supply every
value. `quantpilot.load` does the same: the quantized layers get an empty layout (see
`QuantModule.store_weight_as_integers`), then the file's tensors are *assigned* (not copied), so
only the storage the file fills is ever allocated, in the file's dtypes.

Two ways of building the float model are supported:

- accelerate's `init_empty_weights()` (its default `include_buffers=False`): parameters are meta,
  buffers real. Nothing has to be recomputed.
- `with torch.device("meta"):`: buffers are meta too. Persistent ones come from the file;
  non-persistent ones (rotary `inv_freq`, `position_ids`) are never saved, so they are recomputed
  by the model's own Hugging Face `_init_weights` hook, as transformers' `from_pretrained` does for
  keys a checkpoint lacks. A buffer the hook does not recompute (or a model without the hook) is a
  `ValueError` naming it: build that model with `init_empty_weights()` or on the CPU instead.

Example:
    >>> import torch
    >>> with torch.device("meta"):
    ...     net = torch.nn.Linear(2, 2)
    >>> has_meta_tensors(net)
    True
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import safetensors.torch
import torch
from torch import nn

__all__ = ["has_meta_tensors", "load_weights_file"]


def has_meta_tensors(model: nn.Module) -> bool:
    """True when a parameter or buffer of `model` has no storage (lives on the meta device).

    Example:
        >>> import torch
        >>> has_meta_tensors(torch.nn.Linear(2, 2))
        False
    """
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


def _tensors(model: nn.Module) -> itertools.chain:
    return itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))


def _tie_groups(model: nn.Module) -> list[list[str]]:
    """Names sharing one tensor object (a head tied to its token table)."""
    groups: dict[int, list[str]] = defaultdict(list)
    for name, tensor in _tensors(model):
        groups[id(tensor)].append(name)
    return [names for names in groups.values() if len(names) > 1]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    prefix, _, leaf = name.rpartition(".")
    return model.get_submodule(prefix), leaf


def _retie(model: nn.Module, groups: list[list[str]], loaded: set[str]) -> set[str]:
    """Share again the tensors `assign` replaced under one name only; returns the names refilled.

    The file holds one copy of a tied tensor (safetensors drops the duplicates) and assigning it
    replaces the tensor of that one module, so every other name is pointed at it.
    """
    refilled = set()
    for names in groups:
        source = next((n for n in names if n in loaded), None)
        if source is None:
            continue
        module, leaf = _owner(model, source)
        tensor = getattr(module, leaf)
        for name in names:
            if name != source:
                owner, other = _owner(model, name)
                (owner._parameters if other in owner._parameters else owner._buffers)[other] = tensor
                refilled.add(name)
    return refilled


def _recompute(model: nn.Module, module: nn.Module, names: list[str], fill: float) -> list[torch.Tensor]:
    """Allocate `names` (meta buffers of `module`) prefilled with `fill`, run the init hook, return them."""
    for leaf in names:
        module._buffers[leaf] = torch.full_like(module._buffers[leaf], fill, device="cpu")
    kept = {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items() if "." not in k}
    with torch.no_grad():
        model._init_weights(module)
        for key, value in kept.items():  # what the file filled stays the file's, whatever the hook did
            getattr(module, key).copy_(value)
    return [module._buffers[leaf].clone() for leaf in names]


def _materialise_derived_buffers(model: nn.Module) -> None:
    """Recompute the non-persistent buffers still on the meta device, or say which they are."""
    owners: dict[str, list[str]] = defaultdict(list)
    for name, buffer in model.named_buffers():
        if buffer.is_meta:
            prefix, _, leaf = name.rpartition(".")
            owners[prefix].append(leaf)
    if not owners:
        return
    listed = [f"{p}.{leaf}" if p else leaf for p, leaves in owners.items() for leaf in leaves]
    hint = (
        f"buffers {listed[:5]} are not in the file and were built on the meta device: build the float model "
        "with accelerate's init_empty_weights() (it keeps buffers real) or on the CPU"
    )
    if not callable(getattr(model, "_init_weights", None)):
        raise ValueError(hint)
    for prefix, leaves in owners.items():
        module = model.get_submodule(prefix)
        # Run twice from different fillings: values the hook computes agree, ones it leaves do not.
        first = _recompute(model, module, leaves, 0.0)
        second = _recompute(model, module, leaves, 1.0)
        if not all(torch.equal(a, b) for a, b in zip(first, second, strict=True)):
            raise ValueError(hint)


def load_weights_file(model: nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Load a safetensors file into `model`; meta tensors are assigned the file's, not copied into.

    A model without meta tensors is filled in place (`safetensors.torch.load_model`). Otherwise the
    file's tensors replace the meta ones (their dtypes win), tied tensors are shared again and
    non-persistent meta buffers are recomputed (see the module docstring).

    Returns:
        (missing, unexpected) names, as `load_state_dict(strict=False)` gives them.

    Example:
        >>> import tempfile, torch, safetensors.torch
        >>> path = tempfile.mkdtemp() + "/w.safetensors"
        >>> safetensors.torch.save_model(torch.nn.Linear(2, 2), path)
        >>> with torch.device("meta"):
        ...     net = torch.nn.Linear(2, 2)
        >>> load_weights_file(net, path), net.weight.device.type
        (([], []), 'cpu')
    """
    if not has_meta_tensors(model):
        missing, unexpected = safetensors.torch.load_model(model, path, strict=False)
        return sorted(missing), sorted(unexpected)
    groups = _tie_groups(model)
    state = safetensors.torch.load_file(path)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    refilled = _retie(model, groups, set(state))
    _materialise_derived_buffers(model)
    return sorted(set(missing) - refilled), sorted(unexpected)
