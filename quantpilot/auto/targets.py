"""The autopilot's targets: how FP32, bf16 and a quantized candidate run, deploy and reload on each engine.

| target        | FP32 / bf16 baselines              | a quantized candidate          | deploy/ holds                 |
|---------------|------------------------------------|--------------------------------|-------------------------------|
| openvino      | OpenVINO CPU, f32 / bf16 hint      | its QDQ ONNX on OpenVINO       | model.onnx + engine.json      |
| onnxruntime   | ONNX Runtime CPU (no bf16 kernels) | its QDQ ONNX on ONNX Runtime   | model.onnx + engine.json      |
| torch         | eager fp32 / bf16                  | eager fake quantization        | qp.save folder or safetensors |
| torch-int8    | eager fp32 / bf16                  | the `torch-int8` integer path  | qp.save folder or safetensors |

Example:
    >>> import torch
    >>> m = Bf16Model(torch.nn.Linear(2, 2)); m(torch.ones(1, 2)).dtype
    torch.float32
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ..engines import compile as compile_engine
from ..export import export_onnx
from ..persistence import load, save

__all__ = ["TARGETS", "Bf16Model", "runner", "runner_for_file", "deploy", "reload", "check_target"]

TARGETS = ("openvino", "onnxruntime", "torch", "torch-int8")
# Kinds of candidate a target runs: the float model, its bf16 cast, or a frozen quantized model.
KINDS = ("fp32", "bf16", "quantized")
ONNX_TARGETS = ("openvino", "onnxruntime")
NO_BF16 = {"onnxruntime": "ONNX Runtime's CPU provider has no bf16 kernels: this engine has no bf16 baseline"}


def check_target(target: Any) -> str:
    """`target` if it is one of `TARGETS`, else a one-line ValueError.

    Example:
        >>> check_target("openvino")
        'openvino'
    """
    if target not in TARGETS:
        raise ValueError(f"target={target!r}: use one of {list(TARGETS)}")
    return target


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors inside `value` (tensor, tuple/list, mapping or model output) cast to `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple | list):
        return type(value)(_cast(v, dtype) for v in value) if not hasattr(value, "_fields") else value
    if isinstance(value, Mapping):
        if hasattr(value, "keys") and type(value) is not dict:  # a transformers ModelOutput: cast in place
            for key in list(value.keys()):
                value[key] = _cast(value[key], dtype)
            return value
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


class Bf16Model(nn.Module):
    """A bf16 copy of a model that takes and returns float32, so `eval_fn` treats it like the float model.

    Example:
        >>> import torch
        >>> Bf16Model(torch.nn.Linear(2, 2)).model.weight.dtype
        torch.bfloat16
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(torch.bfloat16).eval()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*_cast(args, torch.bfloat16), **_cast(kwargs, torch.bfloat16))
        return _cast(out, torch.float32)


def runner(target: str, kind: str, model: nn.Module, example: Any) -> Any:
    """A `CompiledModel` running `model` (kind "fp32", "bf16" or "quantized") on `target`, or None (no bf16).

    Example:
        >>> import torch
        >>> runner("torch", "bf16", torch.nn.Linear(2, 2), torch.ones(1, 2))(torch.ones(1, 2)).dtype
        torch.bfloat16
    """
    if kind == "bf16" and target in NO_BF16:
        return None
    if target in ONNX_TARGETS:
        options = {"dtype": "bfloat16" if kind == "bf16" else "float32"} if target == "openvino" else {}
        return compile_engine(model, target, example_inputs=example, **options)
    if kind == "quantized" and target == "torch-int8":
        return compile_engine(model, "torch-int8")
    return compile_engine(model, "torch", dtype="bfloat16" if kind == "bf16" else None)


def runner_for_file(path: Any, target: str, precision: str) -> Any:
    """An ONNX file already exported, compiled on an ONNX target ("f32" or "bf16" hint on OpenVINO).

    Example:
        >>> runner_for_file.__name__
        'runner_for_file'
    """
    options = {"dtype": "bfloat16" if precision == "bf16" else "float32"} if target == "openvino" else {}
    return compile_engine(str(path), target, **options)


def deploy(
    target: str,
    kind: str,
    model: nn.Module,
    example: Any,
    folder: Path,
    onnx_file: Path | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Write what `target` deploys for `model` into `folder` (made here); return the report's `deployed` part.

    ONNX targets get `model.onnx` (QDQ for a quantized model; `onnx_file`, the one already exported for
    timing, is copied instead of exporting again) and `engine.json` (the precision hint);
    torch targets get the `qp.save` folder of a quantized model, or the float/bf16 weights as safetensors.

    Example:
        >>> import tempfile, pathlib, torch
        >>> d = deploy("torch", "bf16", torch.nn.Linear(2, 2), None, pathlib.Path(tempfile.mkdtemp()) / "d")
        >>> d["format"]
        'safetensors (bf16)'
    """
    folder.mkdir(parents=True, exist_ok=False)
    info: dict[str, Any] = {"engine": target, "kind": kind}
    if target in ONNX_TARGETS:
        if onnx_file is not None and Path(onnx_file).is_file():
            shutil.copyfile(onnx_file, folder / "model.onnx")
        else:
            export_onnx(model, example, folder / "model.onnx")
        info["precision"] = "bf16" if kind == "bf16" else (precision or "f32")
        info["format"] = "onnx" + (" (QDQ int8)" if kind == "quantized" else "")
        info["path"] = "deploy/model.onnx"
    elif kind == "quantized":
        save(model, folder / "model")
        info["format"], info["path"] = "quantpilot (qp.save)", "deploy/model"
    else:
        dtype = torch.bfloat16 if kind == "bf16" else torch.float32
        # Cloned: tied weights (a head sharing the token table) share storage, which safetensors refuses.
        state = {k: (v.to(dtype) if v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(state, str(folder / "model.safetensors"))
        info["format"], info["path"] = f"safetensors ({kind})", "deploy/model.safetensors"
    (folder / "engine.json").write_text(json.dumps(info, indent=2))
    info["size_bytes"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return info


def reload(folder: Path, float_model: nn.Module) -> Any:
    """The deployed artifact in `folder`, loaded back in its engine: a callable to hand to `eval_fn`.

    Example:
        >>> import tempfile, pathlib, torch
        >>> net = torch.nn.Linear(2, 2)
        >>> d = pathlib.Path(tempfile.mkdtemp()) / "d"; _ = deploy("torch", "fp32", net, None, d)
        >>> torch.equal(reload(d, net)(torch.ones(1, 2)), net(torch.ones(1, 2)))
        True
    """
    info = json.loads((folder / "engine.json").read_text())
    target, kind = info["engine"], info["kind"]
    if target in ONNX_TARGETS:
        return runner_for_file(folder / "model.onnx", target, info.get("precision", "f32"))
    if kind == "quantized":
        qmodel = load(copy.deepcopy(float_model), folder / "model").eval()
        return compile_engine(qmodel, "torch-int8") if target == "torch-int8" else qmodel
    fresh = copy.deepcopy(float_model)
    state = safetensors.torch.load_file(str(folder / "model.safetensors"))
    fresh.load_state_dict({k: v.to(fresh.state_dict()[k].dtype) for k, v in state.items()})
    fresh.eval()
    return Bf16Model(fresh) if kind == "bf16" else fresh
