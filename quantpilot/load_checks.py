"""What `quantpilot.load` checks in a saved model before it allocates or runs anything the file describes.

A saved directory is data from outside: its JSON map and its safetensors file may be damaged or
hostile. `quantpilot.load` checks, in order:

1. the map (`check_map`): required keys, sane pattern counts;
2. the layers the map rebuilds (`check_layer_entries`): sizes are positive integers equal to the
   float model's own layer at that name (a map never substitutes shapes, nor makes `load` allocate
   a layer larger than the model it is given);
3. the safetensors header against the model's empty layout (`check_tensor_layout`): each tensor's
   dtype is what the layer stores (loading would otherwise cast int32 codes to int8 silently) and
   its shape the layer's; then the per-tensor checksums the map records (`verify_checksums`);
4. the loaded values (`check_values`): codes and zero points inside the spec's code range, scales
   finite and positive.

Every failure is a one-line `ValueError` naming the tensor, layer or key. `save` records the
checksums with `tensor_checksums`.

Example:
    >>> import torch
    >>> sums = tensor_checksums({"w": torch.zeros(2, dtype=torch.int8)})
    >>> sums["w"][:16]
    '96a296d224f285c6'
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .api import _static_quantizers, quantized_layers

__all__ = [
    "MAX_PATTERNS",
    "check_map",
    "check_layer_entries",
    "read_header",
    "check_tensor_layout",
    "verify_checksums",
    "check_values",
    "tensor_checksums",
]

MAX_PATTERNS = 10_000  # skip / overrides / layers patterns a saved recipe may hold (each is matched per layer)
_MAX_HEADER = 100 * 2**20  # bytes of safetensors header read before refusing the file
_CHUNK = 16 * 2**20

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip

# Sizes a rebuilt layer's saved config declares, as (rows, cols) of the float layer's weight.
_SIZE_KEYS = (("out_features", "in_features"), ("num_embeddings", "embedding_dim"))


def check_map(meta: dict[str, Any], path: Path) -> None:
    """Required keys present and of the right kind, and a bounded number of recipe patterns.

    Example:
        >>> check_map({"recipe": {}, "layers": []}, Path("m.json"))
        Traceback (most recent call last):
        ValueError: m.json: "layers" must be a mapping, got list; the map is damaged
    """
    for key in ("recipe", "layers"):
        if key not in meta:
            raise ValueError(f"{path} has no {key!r} key; the map is damaged or was not written by quantpilot.save")
        if not isinstance(meta[key], dict):
            raise ValueError(f'{path}: "{key}" must be a mapping, got {type(meta[key]).__name__}; the map is damaged')
    for key in ("skip", "overrides", "layers", "module_types", "ops", "steps"):
        value = meta["recipe"].get(key)
        if isinstance(value, list | dict) and len(value) > MAX_PATTERNS:
            raise ValueError(
                f"{path}: the recipe holds {len(value)} {key!r} entries (at most {MAX_PATTERNS} are read); "
                "the map is damaged or hostile"
            )
    checksums = meta.get("checksums")
    if checksums is not None and not (
        isinstance(checksums, dict) and all(isinstance(v, str) for v in checksums.values())
    ):
        raise ValueError(f'{path}: "checksums" must map tensor names to sha256 hex strings; the map is damaged')


def _float_size(module: nn.Module) -> tuple[int, int] | None:
    """(rows, cols) of a float layer's weight as a Linear / Embedding reads it; None without a 2-D weight."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    rows, cols = weight.shape
    # transformers' GPT-2 Conv1D stores its weight (in, out).
    return (cols, rows) if type(module).__name__ == "Conv1D" and hasattr(module, "nf") else (rows, cols)


def check_layer_entries(float_model: nn.Module, layers: dict[str, Any]) -> None:
    """Every layer entry with a saved config names a layer of `float_model` with exactly those sizes.

    Runs before anything is built, so a map declaring a 2^20 x 2^13 layer is refused without allocating it.

    Example:
        >>> entry = {"config": {"in_features": 4, "out_features": 3}}
        >>> check_layer_entries(nn.Linear(4, 2), {"": entry})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: the saved layer '' is 3 x 4 (rows x cols) but this float model's is 2 x 4; load it onto ...
    """
    for name, entry in layers.items():
        if not isinstance(entry, dict):
            raise ValueError(f"the saved entry of layer {name!r} is not a mapping; the map is damaged")
        config = entry.get("config")
        if config is None:
            continue
        if not isinstance(config, dict):
            raise ValueError(f"the saved config of layer {name!r} is not a mapping; the map is damaged")
        keys = next((k for k in _SIZE_KEYS if k[0] in config or k[1] in config), None)
        if keys is None:
            continue
        sizes = [config.get(k) for k in keys]
        for key, size in zip(keys, sizes, strict=True):
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"the saved layer {name!r} has {key}={size!r}; sizes must be positive integers")
        try:
            module = float_model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"the saved layer {name!r} does not exist in this float model; load it onto the architecture "
                "it was saved from"
            ) from None
        here = _float_size(module)
        if here != tuple(sizes):
            found = "no 2-D weight" if here is None else f"{here[0]} x {here[1]}"
            raise ValueError(
                f"the saved layer {name!r} is {sizes[0]} x {sizes[1]} (rows x cols) but this float model's is "
                f"{found}; load it onto the model it was saved from"
            )


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors header (tensor name -> dtype, shape, data_offsets) and where the data starts."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < n <= min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path} has no valid safetensors header; the file is damaged or truncated")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ValueError(f"{path} has an unreadable safetensors header; the file is damaged") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has an unreadable safetensors header; the file is damaged")
    header.pop("__metadata__", None)
    for name, info in header.items():
        info = info if isinstance(info, dict) else {}
        offsets = info.get("data_offsets")
        ok = isinstance(info.get("shape"), list) and isinstance(offsets, list) and len(offsets) == 2
        start, end = offsets if ok else (0, -1)
        if not ok or not all(isinstance(o, int) for o in (start, end)) or not 0 <= start <= end <= size - 8 - n:
            raise ValueError(f"{path}: the header entry of {name!r} is damaged or points outside the file")
    return header, 8 + n


def check_tensor_layout(model: nn.Module, header: dict[str, Any], path: Path) -> None:
    """Each stored tensor the model expects has the dtype and shape of the model's empty layout.

    Integer tensors (codes, integer zero points) must match exactly; float tensors must be float.
    """
    expected = model.state_dict(keep_vars=True)
    for name, info in header.items():
        want = expected.get(name)
        if want is None:
            continue  # an unexpected tensor is reported with the missing ones after loading
        stored = _DTYPES.get(info.get("dtype"))
        ok = (
            stored == want.dtype
            if not want.dtype.is_floating_point
            else stored is not None and stored.is_floating_point
        )
        if not ok:
            raise ValueError(
                f"{path}: tensor {name!r} is stored as {info.get('dtype')} but this layer stores "
                f"{str(want.dtype).removeprefix('torch.')}; the file is damaged or not from this model"
            )
        if list(info["shape"]) != list(want.shape):
            raise ValueError(
                f"{path} does not fit this model: tensor {name!r} has shape {info['shape']} but this model's is "
                f"{list(want.shape)}; "
                "load it onto the model it was saved from"
            )


def verify_checksums(checksums: dict[str, str], header: dict[str, Any], data_start: int, path: Path) -> None:
    """The sha256 of each stored tensor's bytes equals the map's (names absent from the file are skipped)."""
    with path.open("rb") as f:
        for name, expected in checksums.items():
            info = header.get(name)
            if info is None:
                continue  # a tied duplicate: safetensors stores one name
            start, end = info["data_offsets"]
            f.seek(data_start + start)
            digest, left = hashlib.sha256(), end - start
            while left:
                chunk = f.read(min(left, _CHUNK))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
            if left or digest.hexdigest() != expected:
                raise ValueError(f"{path}: tensor {name!r} does not match its checksum in the map; the file is damaged")


def tensor_checksums(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """sha256 hex of each tensor's bytes as safetensors stores them (contiguous, little-endian).

    Example:
        >>> len(tensor_checksums({"a": torch.ones(3), "b": torch.tensor(1.0)})["b"])
        64
    """
    out = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or tensor.is_meta:
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        out[name] = hashlib.sha256(data).hexdigest()
    return out


def _in_range(values: torch.Tensor | None, low: float, high: float, what: str) -> None:
    if values is None or values.numel() == 0:
        return
    v = values.detach()
    if v.is_floating_point() and not bool(torch.isfinite(v).all()):
        raise ValueError(f"{what} holds a non-finite value; the file is damaged")
    lo, hi = float(v.min()), float(v.max())
    if lo < low or hi > high:
        raise ValueError(
            f"{what} holds values in [{lo:g}, {hi:g}], outside the code range {low}..{high}; the file is damaged"
        )


def _positive_scale(scale: torch.Tensor | None, what: str) -> None:
    if scale is None or not isinstance(scale, torch.Tensor) or scale.numel() == 0:
        return
    s = scale.detach().float()
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        bad = s[~(torch.isfinite(s) & (s > 0))].flatten()[0].item()
        raise ValueError(f"{what} holds {bad}; scales must be finite and positive; the file is damaged")


def check_values(model: nn.Module) -> None:
    """Codes and zero points inside each spec's code range, scales finite and positive (after loading)."""
    for name, module in quantized_layers(model):
        spec = module.weight_spec
        if spec is None:
            continue
        prefix = f"{name}." if name else ""
        buffers = dict(module.named_buffers(recurse=False))
        _positive_scale(buffers.get("weight_scale"), f"{prefix}weight_scale")
        if spec.dtype.is_float:
            continue
        _in_range(buffers.get("weight_int"), spec.qmin, spec.qmax, f"{prefix}weight_int ({spec.dtype.value})")
        _in_range(buffers.get("weight_zero_point"), spec.qmin, spec.qmax, f"{prefix}weight_zero_point")
    for q in _static_quantizers(model):
        what = q.qualname or "an activation quantizer"
        _positive_scale(q.scale, f"{what}.scale")
        if not q.spec.dtype.is_float and isinstance(q.zero_point, torch.Tensor):
            _in_range(q.zero_point, q.spec.qmin, q.spec.qmax, f"{what}.zero_point")
