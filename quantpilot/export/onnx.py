"""QDQ ONNX export: QuantizeLinear/DequantizeLinear pairs that ONNX Runtime, OpenVINO and TensorRT fuse.

Activations get a Q/DQ pair (per tensor) in front of each quantized layer; weights are stored
once as int8 initializers feeding a DequantizeLinear (per output channel, axis 0), so the file is
about 4x smaller than the float export. The graph is captured with the dynamo exporter: the
legacy TorchScript exporter produces a wrong Hugging Face BERT graph with transformers 5.x.

Example:
    >>> import tempfile, pathlib, torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
    >>> qm = qp.quantize(net, "int8-static")
    >>> with qp.calibrate(qm):
    ...     _ = qm(torch.randn(16, 8))
    >>> path = export_onnx(qp.freeze(qm), torch.randn(2, 8), pathlib.Path(tempfile.mkdtemp()) / "m.onnx")
    >>> path.suffix
    '.onnx'
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# The ONNX exporter builds its op table when an export starts and maps quantized_decomposed ops to
# QuantizeLinear / DequantizeLinear only if they are registered by then: import them first.
import torch.ao.quantization.fx._decomposed  # noqa: F401
from torch import nn

from ..api import quantized_layers
from ..atomic import atomic_path, check_new
from ..batches import eval_mode, first_tensor
from ..nn import QuantModule, TensorQuantizer
from ..nn.experts import traceable_experts
from ..spec import PerChannel, PerTensor, QuantSpec
from .graph_passes import hoist_qdq_above_zero_pads
from .tensorrt_rules import tensorrt_violations

__all__ = ["export_onnx", "TARGETS"]

TARGETS = ("generic", "tensorrt")


class _NamedInputs(nn.Module):
    """Positional-tensor front end: ONNX inputs are positional, Hugging Face models take keywords."""

    def __init__(self, model: nn.Module, names: list[str] | None) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = _call(self.model, self.names, tensors)
        return tuple(t for _, t in _tensor_outputs(out))


def _tensor_outputs(out: Any) -> list[tuple[str, torch.Tensor]]:
    """The tensors a model returns at the top level, named (Hugging Face outputs keep their field names).

    Every output is exported, so no quantized branch (a BERT pooler) is pruned from the graph; the
    first one is the main output (`last_hidden_state`, `logits`).
    """
    if isinstance(out, torch.Tensor):
        return [("output", out)]
    if isinstance(out, Mapping):  # transformers' ModelOutput is an ordered mapping
        named = [(str(k), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    elif isinstance(out, tuple | list):
        named = [(f"output_{i}", v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    else:
        named = []
    if not named:
        return [("output", first_tensor(out))]
    return named


def _check_spec(spec: QuantSpec | None, where: str, target: str, role: str) -> None:
    if spec is None:
        return
    if spec.dtype.value not in ("int8", "uint8") or not isinstance(spec.granularity, PerTensor | PerChannel):
        raise ValueError(
            f"{where}: {role} {spec.dtype.value} {type(spec.granularity).__name__} has no standard QDQ form; "
            "QDQ export covers int8/uint8 per tensor or per channel (use the torch-int8 engine for the rest)"
        )
    if role == "activations" and spec.narrow_range:
        raise ValueError(
            f"{where}: ONNX QuantizeLinear cannot clamp to a narrow range; use narrow_range=False for activations"
        )
    if target == "tensorrt" and (not spec.symmetric or spec.dtype.value != "int8"):
        raise ValueError(
            f"{where}: TensorRT takes symmetric int8 only (zero point 0), got {role} "
            f"{spec.dtype.value} {'symmetric' if spec.symmetric else 'asymmetric'}; use a symmetric int8 recipe"
        )


def _validate(model: nn.Module, target: str) -> None:
    for name, layer in quantized_layers(model):
        assert isinstance(layer, QuantModule)
        if layer.weight_spec is not None and not layer.is_frozen:
            raise ValueError(f"'{name}' is not frozen: call quantpilot.freeze(model) before export")
        _check_spec(layer.weight_spec, name, target, "weights")
        if target == "tensorrt":
            if layer.weight_spec is not None and not layer.weight_spec.narrow_range:
                raise ValueError(
                    f"'{name}': TensorRT expects int8 weights in the restricted range [-127, 127]; "
                    "use narrow_range=True for weights"
                )
            if layer.input_quantizer.spec is None and type(layer).__name__ != "QuantEmbedding":
                raise ValueError(
                    f"'{name}' has a float input: TensorRT fuses a Conv/MatMul/Gemm into int8 only with Q/DQ on its "
                    "input; give the recipe activations, or skip the layer entirely"
                )
    # Layer inputs and functional points (attention matmuls, residual adds) alike.
    for q in model.modules():
        if not isinstance(q, TensorQuantizer) or q.spec is None:
            continue
        where = q.qualname or "a quantizer"
        if q.dynamic:
            raise ValueError(
                f"'{where}' quantizes dynamically (per batch): QDQ graphs carry fixed ranges; "
                "export a static recipe, or run the dynamic model with the torch-int8 engine"
            )
        if q.scale is None:
            raise ValueError(f"'{where}' has no activation range: calibrate and freeze before export")
        _check_spec(q.spec, where, target, "activations")


def _inputs(example_inputs: Any) -> tuple[list[str] | None, tuple[torch.Tensor, ...]]:
    names = None
    if isinstance(example_inputs, Mapping):
        names = list(example_inputs)
        tensors = tuple(example_inputs[n] for n in names)
    elif isinstance(example_inputs, torch.Tensor):
        tensors = (example_inputs,)
    elif isinstance(example_inputs, tuple | list):
        tensors = tuple(example_inputs)
    else:
        tensors = ()
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError(
            "example_inputs must be a tensor, a tuple of tensors or a dict of named tensors (what a tokenizer "
            f"returns with return_tensors='pt'), got {type(example_inputs).__name__}"
        )
    return names, tensors


def export_onnx(
    qmodel: nn.Module,
    example_inputs: Any,
    path: str | Path,
    target: str = "generic",
    opset: int = 18,
) -> Path:
    """Write a frozen quantized model as a QDQ ONNX file.

    Args:
        qmodel: a frozen quantized model with static (calibrated) or no activation quantization.
        example_inputs: a tensor, a tuple of tensors, or a dict of named tensors (as a tokenizer
            returns); the batch axis, and the sequence axis of 2-D integer inputs, are dynamic.
        path: the new file (an existing file is never overwritten).
        target: "generic" (ONNX Runtime, OpenVINO) or "tensorrt" (symmetric int8 only).
        opset: ONNX opset, at least 13 (per-channel DequantizeLinear).

    Returns:
        The path written. The graph passes `onnx.checker`.

    Raises:
        ValueError: an unfrozen or dynamic model, a scheme with no QDQ form, a TensorRT rule broken.

    Example:
        >>> export_onnx.__name__
        'export_onnx'
    """
    import onnx

    _check_args(qmodel, target, opset)
    path = check_new(path)  # an existing file or a symbolic link (even dangling) is refused before the trace
    names, tensors = _inputs(example_inputs)
    input_names = names or [f"input_{i}" for i in range(len(tensors))]
    dynamic = _dynamic_axes(tensors, input_names)
    program = _export_program(qmodel, names, tensors, opset, input_names, dynamic)
    if target == "tensorrt":
        problems = tensorrt_violations(program.model_proto)
        if problems:
            raise ValueError(
                f"the graph breaks {len(problems)} TensorRT QDQ rule(s), e.g. {problems[:3]}; quantize with the "
                "'int8-tensorrt' preset (symmetric int8, matmul and add points) and export again"
            )
    proto = program.model_proto
    hoist_qdq_above_zero_pads(proto)
    # Written under a hidden temporary name and checked there: the .onnx file appears only whole and valid.
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
    return path


def _check_args(qmodel: nn.Module, target: str, opset: int) -> None:
    """Reject an unknown target, an opset below 13, a non-module, or a model with no QDQ form for `target`."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if opset < 13:
        raise ValueError(f"opset {opset} has no per-channel DequantizeLinear; use opset >= 13")
    if not isinstance(qmodel, nn.Module):
        raise TypeError(f"qmodel must be an nn.Module, got {type(qmodel).__name__}")
    _validate(qmodel, target)  # a float model (no quantized layer) exports as plain ONNX


def _dynamic_axes(tensors: tuple[torch.Tensor, ...], input_names: list[str]) -> tuple[dict, ...]:
    """Dynamic batch axis for every input; also the sequence axis of 2-D integer inputs (token ids).

    An encoder-decoder (BART, T5) has two sequence lengths: `decoder_*` inputs share their own axis,
    so the exported graph accepts a decoder length other than the encoder's.
    """
    batch = torch.export.Dim("batch")
    sequences = {"": torch.export.Dim("sequence"), "decoder_": torch.export.Dim("decoder_sequence")}
    axes = []
    for name, t in zip(input_names, tensors, strict=True):
        if t.dim() == 2 and not t.is_floating_point():
            axes.append({0: batch, 1: sequences["decoder_" if name.startswith("decoder_") else ""]})
        else:
            axes.append({0: batch} if t.dim() else {})
    return tuple(axes)


def _export_program(
    qmodel: nn.Module,
    names: list[str] | None,
    tensors: tuple[torch.Tensor, ...],
    opset: int,
    input_names: list[str],
    dynamic: tuple[dict, ...],
):
    """Trace `qmodel` into an ONNX program, its quantizers and parameters restored afterwards."""
    wrapper = _NamedInputs(qmodel, names)
    per_tensor = [
        m
        for m in qmodel.modules()
        if isinstance(m, TensorQuantizer) and m.scale is not None and isinstance(m.spec.granularity, PerTensor)
    ]
    # The trace needs no gradients (autograd-tracked fake-quantize decomposes into ops without
    # export kernels): they are switched off and restored afterwards, as is every module's mode.
    grad_params = [p for p in qmodel.parameters() if p.requires_grad]
    try:
        for q in per_tensor:
            q.export_qparams = (float(q.scale), int(q.zero_point))
        for p in grad_params:
            p.requires_grad_(False)
        with torch.no_grad(), eval_mode(qmodel):
            output_names = [name for name, _ in _tensor_outputs(_call(qmodel, names, tensors))]
            with eval_mode(qmodel):
                return _trace(wrapper, tensors, opset, input_names, output_names, dynamic)
    finally:
        for q in per_tensor:
            q.export_qparams = None
        for p in grad_params:
            p.requires_grad_(True)


def _call(model: nn.Module, names: list[str] | None, tensors: tuple[torch.Tensor, ...]) -> Any:
    return model(**dict(zip(names, tensors, strict=True))) if names else model(*tensors)


def _export_refusal(wrapper: nn.Module, err: Exception) -> str:
    """One line saying which op has no ONNX form, naming mixture-of-experts modules (their grouped matmul has none)."""
    cause, text = err, ""
    while cause is not None and not text:
        text = next((line.strip() for line in str(cause).splitlines() if "No ONNX function" in line), "")
        cause = cause.__cause__ or cause.__context__
    text = text or str(err).strip().splitlines()[0][:200]
    text = re.sub(r"^<class '[\w.]+'>: ", "", text).split(". Failure message")[0]
    model = getattr(wrapper, "model", wrapper)
    experts = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Experts")})
    hint = f"its mixture-of-experts modules ({', '.join(experts)}) have no ONNX form here; " if experts else ""
    return (
        f"torch.onnx cannot export {type(model).__name__}: {hint}{text}; export the model's dense layers "
        "only, or run it in PyTorch (quantpilot.engines.compile(..., engine='torch'))"
    )


def _trace(wrapper, tensors, opset, input_names, output_names, dynamic):
    # MoE experts trace through transformers' batched_mm implementation (grouped_mm has no ONNX form).
    with warnings.catch_warnings(), traceable_experts(wrapper):
        warnings.simplefilter("ignore")  # exporter chatter about optional packages (torchvision)
        try:
            return torch.onnx.export(
                wrapper,
                tensors,
                dynamo=True,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=(dynamic,),  # forward(*tensors): one varargs entry
                verbose=False,
            )
        except Exception as err:  # noqa: BLE001 (the exporter raises many types; each means "no ONNX form")
            raise ValueError(_export_refusal(wrapper, err)) from None
