"""The `torch-int8` engine: a frozen quantized model with real integer Linear layers, in pure PyTorch.

`compile(frozen_qmodel, engine="torch-int8")` deep-copies the model and swaps every frozen
`QuantLinear` the integer path can serve for `Int8Linear` (int8 x int8 -> int32 GEMM with
`torch._int_mm`) or `Int8WeightOnlyLinear` (W8A16), and every packed `WeightOnlyLinear` from
RTN / GPTQ / AWQ for `WeightOnlyKernelLinear` (PyTorch's `_weight_int8pack_mm` /
`_weight_int4pack_mm_for_cpu` for decode-sized batches, dequantize + bf16 matmul for prefill).
Every other quantized layer keeps its
fake-quant module, and the compiled object says which layer runs how (`integer_layers`) and why
a layer did not (`fallback_layers`), so nothing is silently approximated.

Speed: on CPUs with bf16 hardware (AMX, AVX512-BF16) this engine is slower than the float model
cast to bf16 (measured on MiniLM, batch 32 x 128, Xeon with AMX: 0.34x torch bf16 eager; Zen 4:
0.37x): `torch._int_mm` and the per-call activation quantize cannot beat oneDNN's bf16 GEMMs there.
Compiling warns on such a CPU and names the engines to use instead (OpenVINO with
`quantpilot.placement`'s placements, or `engine="torch", dtype="bfloat16"`). Use torch-int8 to check
integer arithmetic exactly, or on CPUs without bf16 units.

PyTorch's own dynamic quantized Linear (`torch.ao` / oneDNN qlinear_dynamic) is never called:
it was seen crashing in torch 2.13 on this CPU. A model converted by
`torch.ao.quantization.quantize_dynamic` is refused with a message instead of being run.

Example:
    >>> import torch, quantpilot as qp
    >>> qmodel = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(16, 8)), "int8-dynamic"))
    >>> runner = qp.engines.compile(qmodel, engine="torch-int8")
    >>> list(runner.integer_layers), runner(torch.randn(4, 16)).shape
    (['0'], torch.Size([4, 8]))
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from ..api import quantized_layers, unfrozen_parts
from ..batches import call_model
from ..nn.integer_linear import ActivationCodeCache, Int8Linear, to_integer, unsupported_reason
from .base import CompiledModel, register_engine

__all__ = ["TorchInt8Model"]


def _torch_ao_modules(model: nn.Module) -> list[str]:
    """Names of modules converted by torch.ao quantization (their dynamic qlinear must not run here)."""
    return [name for name, m in model.named_modules() if type(m).__module__.startswith("torch.ao.nn.quantized")]


def _check_frozen(model: nn.Module) -> None:
    ao = _torch_ao_modules(model)
    if ao:
        # Also when quantpilot layers sit beside them: running the copy would call torch.ao's kernel.
        raise ValueError(
            f"the model holds torch.ao quantized modules (e.g. {ao[:3]}); torch-int8 never runs torch.ao's "
            "oneDNN dynamic qlinear (it crashes in torch 2.13 on some CPUs). Quantize the float "
            "model with quantpilot.quantize(model, 'int8-dynamic'), freeze it, then compile it"
        )
    layers = quantized_layers(model)
    if not layers:
        raise ValueError(
            "the model has no quantized layer: quantize it with quantpilot.quantize(model, recipe), calibrate and "
            "freeze it, then compile it for torch-int8"
        )
    unfrozen = unfrozen_parts(model)
    if unfrozen:
        raise ValueError(
            f"freeze first: {len(unfrozen)} layer(s) or input(s) are not frozen (e.g. {unfrozen[:3]}); run "
            "calibration data through the model inside `with quantpilot.calibrate(model):` if it has static "
            "activations, then call quantpilot.freeze(model) before compiling for torch-int8"
        )


class TorchInt8Model(CompiledModel):
    """A frozen quantized model whose Linear layers run on int8 integer kernels where they can.

    Args:
        model: a model quantized with `quantpilot.quantize` and frozen with `quantpilot.freeze`.
            It is not modified: the engine runs a deep copy.

    Attributes:
        model: the copy that runs, in eval mode.
        integer_layers: `{qualified name: what it runs}` for each layer on the integer path.
        fallback_layers: `{qualified name: why not}` for each quantized layer that keeps its
            fake-quant module.

    Raises:
        TypeError: `model` is not an `nn.Module`.
        ValueError: the model has no quantized layer, or is not frozen ("freeze first").

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> qnet = qp.quantize(net, "int8-static")
        >>> with qp.calibrate(qnet):
        ...     _ = qnet(torch.randn(64, 8))
        >>> runner = TorchInt8Model(qp.freeze(qnet))
        >>> sorted(runner.integer_layers), runner.fallback_layers
        (['0', '2'], {})
    """

    engine = "torch-int8"

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"the torch-int8 engine runs an nn.Module, got {type(model).__name__}")
        _check_frozen(model)
        self.model = copy.deepcopy(model).eval()
        self.integer_layers: dict[str, str] = {}
        self.fallback_layers: dict[str, str] = {}
        # One cache for all layers: query, key and value read one tensor and quantize it once.
        self._codes = ActivationCodeCache()
        for name, layer in quantized_layers(self.model):
            reason = unsupported_reason(layer)
            if reason is not None:
                self.fallback_layers[name] = reason
                continue
            integer = to_integer(layer)
            if isinstance(integer, Int8Linear):
                integer.code_cache = self._codes
            self.integer_layers[name] = integer.path
            if name == "":
                self.model = integer
            else:
                parent, _, child = name.rpartition(".")
                setattr(self.model.get_submodule(parent), child, integer)
        _warn_if_bf16_wins(self.integer_layers)
        if not self.integer_layers:
            warnings.warn(
                "torch-int8: no layer runs on the integer path, the model runs as fake-quant; reasons: "
                + "; ".join(f"{n}: {r}" for n, r in list(self.fallback_layers.items())[:3]),
                stacklevel=3,
            )

    def run(self, batch: Any) -> Any:
        """Run one batch (a dict of keyword inputs, a tuple of positional ones, or a tensor).

        Example:
            >>> import torch, quantpilot as qp
            >>> qm = qp.freeze(qp.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), "w8a16"))
            >>> TorchInt8Model(qm).run(torch.ones(1, 4)).shape
            torch.Size([1, 4])
        """
        # no_grad, not inference_mode: the code cache needs version counters to see in-place changes.
        try:
            with torch.no_grad():
                return call_model(self.model, batch)
        finally:
            self._codes.clear()


def bf16_hardware(flags: dict | None = None) -> bool:
    """True when the CPU has bf16 matrix units (AMX) or AVX512-BF16, where bf16 eager beats torch-int8.

    Example:
        >>> bf16_hardware({"amx_bf16": True}), bf16_hardware({"avx2": True})
        (True, False)
    """
    if flags is None:
        from ..machine import cpu_report

        flags = cpu_report()["flags"]
    return bool(flags.get("amx_bf16") or flags.get("avx512_bf16"))


def _warn_if_bf16_wins(integer_layers: dict[str, str]) -> None:
    # Only the W8A8 GEMM path: weight-only kernels serve memory-bound decoding, where they can win.
    if any(path.startswith("int8 GEMM") for path in integer_layers.values()) and bf16_hardware():
        warnings.warn(
            "torch-int8 is slower than bf16 on this CPU (it has bf16 units; MiniLM measured at 0.34x torch bf16 "
            "eager on AMX): for speed use engine='openvino' with a placement from "
            "quantpilot.placement.placements_for, or engine='torch', dtype='bfloat16'; torch-int8 is for checking "
            "integer arithmetic",
            UserWarning,
            stacklevel=5,
        )


@register_engine("torch-int8")
def _torch_int8_engine(model: Any) -> CompiledModel:
    return TorchInt8Model(model)
