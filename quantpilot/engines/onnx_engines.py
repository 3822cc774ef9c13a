"""The ONNX engines: `onnxruntime` and `openvino`, both fed by the same QDQ (or float) ONNX file.

`compile(model_or_onnx, engine="onnxruntime" | "openvino", example_inputs=...)` takes either an
ONNX path or an `nn.Module`. A module is exported first with `quantpilot.export_onnx` (QDQ when it
is a frozen quantized model, plain float otherwise) into a temporary directory that lives as long
as the compiled object; `example_inputs` is then required. Outputs come back as torch tensors.

Both engines fuse QuantizeLinear/DequantizeLinear pairs around MatMul/Gemm/Conv into int8 kernels;
`OpenVINOModel.int8_ops()` reads the compiled (runtime) graph so a test can prove int8 really runs.

Example:
    >>> import tempfile, pathlib, torch, quantpilot as qp
    >>> runner = qp.engines.compile(torch.nn.Linear(4, 2), engine="onnxruntime", example_inputs=torch.ones(1, 4))
    >>> runner(torch.ones(3, 4)).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import CompiledModel, register_engine

__all__ = ["OnnxRuntimeModel", "OpenVINOModel", "as_onnx_file"]


def as_onnx_file(model: Any, example_inputs: Any, target: str = "generic") -> tuple[Path, Any]:
    """The ONNX file for `model`: the path itself, or a fresh export in a temporary directory.

    Returns:
        `(path, keep_alive)`: hold `keep_alive` as long as the file is needed (the directory is
        deleted with it); it is None for a path the user gave.

    Example:
        >>> as_onnx_file("model.onnx", None)[0].name
        'model.onnx'
    """
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if path.suffix != ".onnx":
            raise ValueError(f"{path} is not an .onnx file; pass an ONNX path or an nn.Module")
        return path, None
    if not isinstance(model, nn.Module):
        raise TypeError(f"pass an nn.Module or the path of an .onnx file, got {type(model).__name__}")
    if example_inputs is None:
        raise ValueError(
            "compiling an nn.Module for an ONNX engine exports it first: pass example_inputs=... "
            "(a tensor, a tuple of tensors or the dict a tokenizer returns)"
        )
    from ..export.onnx import export_onnx

    workdir = tempfile.TemporaryDirectory(prefix="quantpilot-onnx-")
    path = export_onnx(model, example_inputs, Path(workdir.name) / "model.onnx", target=target)
    return path, workdir


def _feeds(batch: Any, names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(batch, Mapping):
        missing = [n for n in names if n not in batch]
        if missing:
            raise ValueError(f"the ONNX graph needs inputs {names}; missing {missing}")
        return {n: _numpy(batch[n]) for n in names}
    tensors = (batch,) if isinstance(batch, torch.Tensor | np.ndarray) else tuple(batch)
    if len(tensors) != len(names):
        raise ValueError(f"the ONNX graph takes {len(names)} inputs {names}, got {len(tensors)}")
    return {n: _numpy(t) for n, t in zip(names, tensors, strict=True)}


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _threads(threads: int | None) -> int:
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return threads or torch.get_num_threads()


class OnnxRuntimeModel(CompiledModel):
    """An ONNX Runtime CPU session over an ONNX file (QDQ graphs run with int8 kernels).

    Example:
        >>> OnnxRuntimeModel.engine
        'onnxruntime'
    """

    engine = "onnxruntime"

    def __init__(self, model: Any, example_inputs: Any = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path, self._keep_alive = as_onnx_file(model, example_inputs)
        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, batch: Any) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, _feeds(batch, self.input_names))[0])


class OpenVINOModel(CompiledModel):
    """An OpenVINO CPU compiled model; `dtype="bfloat16"` asks the CPU plugin for bf16 inference.

    Example:
        >>> OpenVINOModel.engine
        'openvino'
    """

    engine = "openvino"

    def __init__(
        self, model: Any, example_inputs: Any = None, threads: int | None = None, dtype: str = "float32"
    ) -> None:
        import openvino as ov

        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        self.path, self._keep_alive = as_onnx_file(model, example_inputs)
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "f32" if dtype == "float32" else "bf16",
            "INFERENCE_NUM_THREADS": _threads(threads),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.request = self.compiled.create_infer_request()

    def run(self, batch: Any) -> torch.Tensor:
        results = self.request.infer(_feeds(batch, self.input_names))
        return torch.from_numpy(np.array(results[self.compiled.outputs[0]]))

    def int8_ops(self) -> list[tuple[str, str]]:
        """`(type, name)` of the compute ops the CPU plugin runs in int8/uint8 (from the runtime graph).

        Example:
            >>> OpenVINOModel.int8_ops.__name__
            'int8_ops'
        """
        out = []
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
            if precision.lower() in ("i8", "u8") and kind in _COMPUTE_OPS:
                out.append((kind, op.get_friendly_name()))
        return out


# The runtime-graph layer types that do the arithmetic (the ones int8 should speed up).
_COMPUTE_OPS = ("FullyConnected", "MatMul", "Convolution", "GroupConvolution")


@register_engine("onnxruntime")
def _onnxruntime_engine(model: Any, example_inputs: Any = None, threads: int | None = None) -> CompiledModel:
    return OnnxRuntimeModel(model, example_inputs=example_inputs, threads=threads)


@register_engine("openvino")
def _openvino_engine(
    model: Any, example_inputs: Any = None, threads: int | None = None, dtype: str = "float32"
) -> CompiledModel:
    return OpenVINOModel(model, example_inputs=example_inputs, threads=threads, dtype=dtype)
