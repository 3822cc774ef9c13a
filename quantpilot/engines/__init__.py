"""Engines that run quantized models: one `compile(...)` shape for all of them.

Example:
    >>> import torch, quantpilot as qp
    >>> qp.engines.compile(torch.nn.Linear(2, 2), engine="torch").engine
    'torch'
"""

from . import onnx_engines, torch_int8  # noqa: F401 (importing them registers their engines)
from .base import CompiledModel, available_engines, compile, register_engine

__all__ = ["CompiledModel", "available_engines", "compile", "register_engine"]
