"""One shape for every engine: compile a (quantized) model, call it, time it.

Example:
    >>> import torch
    >>> from quantpilot.engines import compile
    >>> runner = compile(torch.nn.Linear(4, 2), engine="torch")
    >>> runner(torch.ones(1, 4)).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from typing import Any

from ..batches import call_model
from ..timing import median_latency

__all__ = ["CompiledModel", "register_engine", "compile", "available_engines"]


class CompiledModel(abc.ABC):
    """A model ready to run on one engine. Subclasses implement `run(batch)`.

    `__call__` accepts the same forms as the model (`runner(**inputs)`, `runner(*args)`), and
    `benchmark` returns the median latency in seconds.
    """

    engine: str = "?"

    @abc.abstractmethod
    def run(self, batch: Any) -> Any:
        """Run one batch given as a dict (keyword inputs), a tuple (positional) or a tensor."""

    def __call__(self, *args: Any, **inputs: Any) -> Any:
        if args and inputs:
            raise TypeError("pass inputs either by keyword or by position, not both")
        if inputs:
            return self.run(inputs)
        return self.run(args[0] if len(args) == 1 else tuple(args))

    def benchmark(self, inputs: Any, warmup: int = 3, iters: int = 20) -> float:
        """Median seconds per call of `inputs` (a dict, tuple or tensor), after `warmup` calls.

        Example:
            >>> import torch
            >>> compile(torch.nn.Identity(), engine="torch").benchmark(torch.ones(1), 0, 2) >= 0
            True
        """
        return median_latency(lambda: self.run(inputs), warmup, iters)


_ENGINES: dict[str, Callable[..., CompiledModel]] = {}


def register_engine(name: str) -> Callable[[Callable[..., CompiledModel]], Callable[..., CompiledModel]]:
    """Decorator adding an engine factory `factory(model_or_path, **options) -> CompiledModel`.

    Example:
        >>> "torch" in available_engines()
        True
    """

    def decorator(factory: Callable[..., CompiledModel]) -> Callable[..., CompiledModel]:
        _ENGINES[name] = factory
        return factory

    return decorator


def available_engines() -> list[str]:
    """Names accepted by `compile`.

    Example:
        >>> "torch" in available_engines()
        True
    """
    return sorted(_ENGINES)


def compile(model: Any, engine: str = "torch", **options: Any) -> CompiledModel:  # noqa: A001 (mirrors torch.compile)
    """Prepare `model` (an `nn.Module`, or an ONNX file path for ONNX engines) to run on `engine`.

    Args:
        model: a quantized or float model, or the path of an exported ONNX file.
        engine: one of `available_engines()`.
        **options: engine-specific settings (threads, dtype, example inputs, ...).

    Returns:
        A `CompiledModel`.

    Example:
        >>> import torch
        >>> compile(torch.nn.Identity(), engine="torch").engine
        'torch'
    """
    if engine not in _ENGINES:
        raise ValueError(f"unknown engine {engine!r}; available: {available_engines()}")
    return _ENGINES[engine](model, **options)


class TorchModel(CompiledModel):
    """The PyTorch model itself (the fake-quant reference, or a float model), optionally cast to bf16.

    Example:
        >>> import torch
        >>> TorchModel(torch.nn.Conv2d(3, 2, 1), dtype="bfloat16")(torch.ones(1, 3, 4, 4)).dtype
        torch.bfloat16
    """

    engine = "torch"

    def __init__(self, model: Any, dtype: str | None = None) -> None:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"the torch engine runs an nn.Module, got {type(model).__name__}")
        if dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"dtype must be None, 'float32' or 'bfloat16', got {dtype!r}")
        self.dtype = getattr(torch, dtype) if dtype else None
        # A cast copies: the caller's model stays as it was given.
        self.model = copy.deepcopy(model).to(self.dtype) if self.dtype else model
        self.model.eval()

    def run(self, batch: Any) -> Any:
        import torch

        if self.dtype is not None:
            # Float inputs (images) follow the model's dtype; integer inputs (token ids) stay as they are.
            cast = lambda t: t.to(self.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
            if isinstance(batch, dict):
                batch = {k: cast(v) for k, v in batch.items()}
            elif isinstance(batch, tuple | list):
                batch = type(batch)(cast(v) for v in batch)
            else:
                batch = cast(batch)
        with torch.inference_mode():
            return call_model(self.model, batch)


@register_engine("torch")
def _torch_engine(model: Any, dtype: str | None = None) -> CompiledModel:
    return TorchModel(model, dtype=dtype)
