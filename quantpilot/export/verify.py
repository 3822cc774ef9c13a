"""Does an exported QDQ graph compute what the PyTorch fake-quant model computes? Measured point by point.

Comparing only the final outputs of a deep quantized network says little: a float difference of
one ulp upstream (another summation order in a MatMul) flips a rounding decision, and the flip
grows layer after layer — the fake-quant model does the same to itself under a 1e-6 relative
perturbation of its input (measured on MiniLM: up to 30 codes apart after six layers). So the check
is teacher-forced: ONNX Runtime runs the graph with every QuantizeLinear output exposed; PyTorch
runs the model with each quantizer computing its own codes from its input, comparing them with
ONNX Runtime's codes for that point, then continuing from ONNX Runtime's codes. Each point thus
sees the same upstream codes in both runtimes, and a correct export agrees within one code at
every point (ties broken by a last-bit float difference) and within float rounding at the output.

Example:
    >>> import tempfile, pathlib, torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> qm = qp.quantize(net, "int8-static")
    >>> with qp.calibrate(qm):
    ...     _ = qm(torch.randn(32, 8))
    >>> x = torch.randn(4, 8)
    >>> path = qp.export_onnx(qp.freeze(qm), x, pathlib.Path(tempfile.mkdtemp()) / "m.onnx")
    >>> report = compare_with_onnxruntime(qm, path, x)
    >>> report.points, report.max_code_difference <= 1
    (2, True)
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..batches import call_model, first_tensor
from ..nn import TensorQuantizer
from ..primitives import dequantize, quantize
from ..surgery import observe

__all__ = ["AgreementReport", "compare_with_onnxruntime"]


@dataclass(frozen=True)
class AgreementReport:
    """Point-by-point agreement of an exported graph with the PyTorch model.

    Attributes:
        points: quantization points compared.
        max_code_difference: largest |code_onnx - code_torch| over all points and elements.
        differing_fraction: fraction of all compared codes that differ at all.
        max_output_error: largest absolute difference of the first output (teacher-forced).
        output_scale: largest absolute value of that output, for scale.
    """

    points: int
    max_code_difference: int
    differing_fraction: float
    max_output_error: float
    output_scale: float


def _constant(model, name: str) -> np.ndarray:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    raise ValueError(f"QuantizeLinear parameter {name!r} is not a constant; cannot match it to a quantizer")


def _key(scale: float, zero_point: int) -> tuple:
    return (np.float32(scale).tobytes(), int(zero_point))


def _aligned(codes: np.ndarray, shape: tuple[int, ...], zero_point: int) -> list[torch.Tensor]:
    """ONNX Runtime's codes placed in a tensor of PyTorch's shape, for every possible offset.

    Equal shapes give one candidate. The export moves Q/DQ above zero Pads (exact: padding is the
    zero point's code), so there a point's codes are the unpadded tensor and the padding is added back.
    """
    if codes.shape == shape:
        return [torch.from_numpy(codes.astype(np.int32))]
    if codes.ndim != len(shape) or any(c > s for c, s in zip(codes.shape, shape, strict=True)):
        return []
    out = []
    for offset in itertools.product(*(range(s - c + 1) for c, s in zip(codes.shape, shape, strict=True))):
        full = torch.full(shape, zero_point, dtype=torch.int32)
        full[tuple(slice(o, o + c) for o, c in zip(offset, codes.shape, strict=True))] = torch.from_numpy(
            codes.astype(np.int32)
        )
        out.append(full)
    return out


def _onnx_codes(path: Path, feeds: dict[str, np.ndarray]) -> tuple[dict[tuple, list[np.ndarray]], np.ndarray]:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    outputs = []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            scale, zero_point = _constant(model, node.input[1]), _constant(model, node.input[2])
            if scale.size != 1:
                continue  # per-channel activation points are not produced by quantpilot's export
            outputs.append((node.output[0], float(scale.reshape(())), int(zero_point.reshape(()))))
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.output[0]))
    options = ort.SessionOptions()
    # The unoptimised graph: fusions may drop the QuantizeLinear outputs this check reads.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    results = session.run(None, {n: feeds[n] for n in names})
    codes: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for (_, scale, zero_point), value in zip(outputs, results[-len(outputs) :] if outputs else [], strict=True):
        codes[_key(scale, zero_point)].append(value)
    return codes, results[0]


def compare_with_onnxruntime(qmodel: nn.Module, path: str | Path, inputs: Any) -> AgreementReport:
    """Run the exported graph and the PyTorch model side by side, teacher-forced at every quantizer.

    Args:
        qmodel: the frozen model that was exported (not modified).
        path: the ONNX file `export_onnx` wrote for it.
        inputs: a batch in the form used for export (tensor, tuple, or a mapping of named tensors such
            as a tokenizer's `BatchEncoding`).

    Returns:
        An `AgreementReport`.

    Raises:
        ValueError: a quantizer of the model has no QuantizeLinear in the graph.

    Example:
        >>> compare_with_onnxruntime.__name__
        'compare_with_onnxruntime'
    """
    if isinstance(inputs, Mapping):
        # Any mapping (a tokenizer's `BatchEncoding` is a `UserDict`, not a dict): a dict of tensors.
        inputs = {str(k): torch.as_tensor(v) for k, v in inputs.items()}
        tensors = dict(inputs)
    elif isinstance(inputs, torch.Tensor):
        tensors = {"input_0": inputs}
    else:
        tensors = {f"input_{i}": t for i, t in enumerate(inputs)}
    feeds = {k: v.detach().cpu().numpy() for k, v in tensors.items()}
    onnx_codes, onnx_output = _onnx_codes(Path(path), feeds)
    stats = {"points": 0, "max": 0, "differing": 0, "total": 0}
    # Every quantizer, under a label of its own (a shared one is observed once, as `modules()` yields it once).
    quantizers = {
        f"{i}:{m.qualname}": m for i, m in enumerate(m for m in qmodel.modules() if isinstance(m, TensorQuantizer))
    }

    def teacher_force(label: str, args: tuple, _kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        module = quantizers[label]
        if module.spec is None or module.scale is None:
            return output
        x = args[0]
        scale, zero_point = float(module.scale), int(module.zero_point)
        key = _key(scale, zero_point)
        ours = quantize(x.float(), module.scale, module.zero_point, module.spec).to(torch.int32)
        candidates = [
            (int((c - ours).abs().max()), i, c)
            for i, codes in enumerate(onnx_codes.get(key, []))
            for c in _aligned(codes, tuple(x.shape), zero_point)
        ]
        if not candidates:
            raise ValueError(f"'{module.qualname}' has no QuantizeLinear in {path}; was it exported from this model?")
        # The same (scale, zero point) can label several points (query/key/value share an input, and the
        # exporter may merge their Q nodes): the closest codes are this point's.
        _, _, reference = min(candidates, key=lambda c: (c[0], c[1]))
        diff = (reference - ours).abs()
        stats["points"] += 1
        stats["max"] = max(stats["max"], int(diff.max()))
        stats["differing"] += int((diff > 0).sum())
        stats["total"] += diff.numel()
        forced = reference.to(module.spec.dtype.torch_dtype)
        return dequantize(forced, module.scale, module.zero_point, module.spec, x.dtype)

    with observe(qmodel, quantizers, after=teacher_force), torch.inference_mode():
        output = first_tensor(call_model(qmodel, inputs)).float().numpy()
    return AgreementReport(
        points=stats["points"],
        max_code_difference=stats["max"],
        differing_fraction=stats["differing"] / max(stats["total"], 1),
        max_output_error=float(np.abs(output - onnx_output).max()),
        output_scale=float(np.abs(output).max()),
    )
