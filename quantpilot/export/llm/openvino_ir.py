"""OpenVINO IR of a quantized causal LM with compressed weights, in NNCF's `compress_weights` layout.

The model is traced once by `openvino.convert_model` with every quantized layer shown as a float
`nn.Linear` / `nn.Embedding` holding quantpilot's dequantized weight; each of those weight constants
(found by its exact bytes) is then replaced by the decompression subgraph NNCF writes and the CPU
plugin runs as compressed weights: a low-bit constant (u4 / u8 codes, i4 / i8 for signed codes)
-> Convert -> Subtract(zero point, a constant of the same low-bit type; omitted for signed codes
with zero points 0) -> Multiply(scale) -> Reshape (groups) -> the MatMul / Gather. The arithmetic
runs in f32, so the IR computes exactly quantpilot's weights (scales stored in f16 like NNCF's when
they are fp16 values, quantpilot's default, and widened to f32 so `(q - z) * s` is not rounded). Compiled
with `INFERENCE_PRECISION_HINT=f32` and `DYNAMIC_QUANTIZATION_GROUP_SIZE=0` the logits equal quantpilot's
within 1e-6; OpenVINO's CPU defaults (bf16 where the CPU has it, int8 dynamic quantization of
activations) differ by ~0.5 %.
By default the traced graph carries the KV cache as OpenVINO state (`openvino_kv`: the form optimum-intel
and openvino-genai run, decoding one token per call); `kv_cache=False` writes the full-sequence graph.

Example (a trace takes seconds; `tests/export/llm/test_openvino_ir.py` runs whole exports):
    >>> import tempfile, os, quantpilot as qp
    >>> from quantpilot.testing import tiny_causal_lm
    >>> q = qp.algorithms.rtn(tiny_causal_lm("llama"), bits=4, group_size=32)
    >>> r = write_openvino_ir(q, os.path.join(tempfile.mkdtemp(), "m.xml"))  # doctest: +SKIP
    >>> r.compressed, r.low_bit_types  # doctest: +SKIP
    (14, ('u4',))
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...atomic import atomic_directory, check_new
from ...nn.quant_module import QuantModule
from .openvino_kv import convert_with_cache, make_stateful
from .weights import architecture, lm_tensors

__all__ = ["write_openvino_ir", "OpenVINOExport", "float_twin"]


@dataclass(frozen=True)
class OpenVINOExport:
    """What `write_openvino_ir` wrote: the .xml path (its .bin beside it) and the weights it compressed.

    Example:
        >>> OpenVINOExport(Path("m.xml"), 2, ("u4",)).compressed
        2
    """

    path: Path
    compressed: int
    low_bit_types: tuple[str, ...]
    stateful: bool = False  # KV cache as OpenVINO state (`openvino_kv`), else a full-sequence graph


class _Logits(nn.Module):
    """Token ids -> logits, no cache: the graph OpenVINO traces."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # An explicit mask spares the trace transformers' packed-sequence check (aten::diff has no OpenVINO form).
        mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of the model with every quantized layer as a float Linear / Embedding of its dequantized weight.

    Example:
        >>> import quantpilot as qp
        >>> net = qp.algorithms.rtn(torch.nn.Sequential(torch.nn.Linear(64, 8)), bits=4, group_size=32, skip=())
        >>> type(float_twin(net)[0]).__name__
        'Linear'
    """
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if not isinstance(module, QuantModule) or module.weight_spec is None:
            continue
        weight = module.dequantized_weight(torch.float32).detach()
        if module.computes == "lookup":
            plain = nn.Embedding(*weight.shape, _weight=weight.clone())
        else:
            bias = getattr(module, "bias", None)
            plain = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            plain.weight = nn.Parameter(weight.clone())
            if bias is not None:
                plain.bias = nn.Parameter(bias.detach().float().clone())
        parent, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, leaf, plain)
    return twin.float().eval()


def _key(array: np.ndarray) -> tuple:
    return tuple(array.shape), hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _decompression(t: Any, ops: Any, ov: Any) -> tuple[Any, str]:
    """The low-bit constant and its Convert/Subtract/Multiply/Reshape subgraph for one weight (f32 out)."""
    rows, cols = t.shape
    groups = cols // t.group_size
    signed = t.signed
    kind = f"{'i' if signed else 'u'}{4 if t.bits == 4 else 8}"
    ov_type = getattr(ov.Type, kind)
    codes = t.codes.to(torch.int8 if signed else torch.uint8).numpy().reshape(rows, groups, t.group_size)
    weight = ops.convert(ops.constant(codes, dtype=ov_type), ov.Type.f32)
    middle = 0 if signed else None  # unsigned codes always carry their zero point, as NNCF's asym layout
    zero = t.zero_point.numpy().reshape(rows, groups, 1)
    if middle is None or not (zero == middle).all():
        zp = zero.astype(np.int8 if signed else np.uint8)
        weight = ops.subtract(weight, ops.convert(ops.constant(zp, dtype=ov_type), ov.Type.f32))
    scale = t.scale.numpy().astype(np.float32).reshape(rows, groups, 1)
    half = scale.astype(np.float16)
    # fp16 scales (quantpilot's default) are stored as f16, as NNCF stores them, and widened to f32 in the graph:
    # the same values at half the bytes (f32 scales cost 0.1 bit per weight more than NNCF's file at g128).
    exact = np.array_equal(half.astype(np.float32), scale)
    factor = ops.convert(ops.constant(half), ov.Type.f32) if exact else ops.constant(scale)
    weight = ops.multiply(weight, factor)
    return ops.reshape(weight, ops.constant(np.array([rows, cols], dtype=np.int64)), False), kind


def write_openvino_ir(model: Any, path: str | Path, kv_cache: bool = True) -> OpenVINOExport:
    """Write a frozen GPT-2 / Llama quantpilot model as OpenVINO IR (`path` .xml + .bin) with compressed weights.

    Args:
        model: frozen weight-only quantpilot model (4- or 8-bit codes) of a transformers GPT-2 or Llama.
        path: the .xml file to create; the .bin goes beside it (both new; written atomically).
        kv_cache: the stateful graph with the KV cache as OpenVINO state (`openvino_kv`: one request
            scores a window, or decodes a token per call; `reset_state()` between sequences), as
            optimum-intel exports; False writes the stateless full-sequence graph (`input_ids` -> logits).

    Example:
        >>> write_openvino_ir(torch.nn.Linear(2, 2), "m.xml")
        Traceback (most recent call last):
        ValueError: export_llm takes a transformers causal LM (model.config.model_type one of gpt2, llama); got a Linear
    """
    import openvino as ov
    import openvino.opset13 as ops

    architecture(model)
    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"the OpenVINO IR path must end in .xml (the .bin is written beside it), got {path.name}")
    check_new(path), check_new(path.with_suffix(".bin"))
    quantized = {_key(t.value.numpy()): t for t in lm_tensors(model).values() if t.codes is not None}
    twin = float_twin(model)
    with torch.no_grad():
        if kv_cache:
            ir = convert_with_cache(twin)
        else:
            example = torch.zeros(1, 8, dtype=torch.long)
            ir = ov.convert_model(_Logits(twin), example_input=example, input=[((-1, -1), ov.Type.i64)])
    done, kinds = set(), set()
    for node in ir.get_ordered_ops():
        if node.get_type_name() != "Constant" or len(node.get_output_partial_shape(0)) != 2:
            continue
        if node.get_output_element_type(0) != ov.Type.f32:
            continue
        key = _key(node.get_data())
        t = quantized.get(key)
        if t is None:
            continue
        replacement, kind = _decompression(t, ops, ov)
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(replacement.output(0))
        done.add(key)
        kinds.add(kind)
    if len(done) != len(quantized):
        raise RuntimeError(
            f"OpenVINO export: {len(quantized) - len(done)} quantized weights were not found in the traced graph"
        )
    ir.validate_nodes_and_infer_types()
    if kv_cache:
        make_stateful(ir)  # after the replacement: the same constants, the past/present pairs become state
    with atomic_directory(path.parent) as tmp:
        ov.save_model(ir, str(tmp / path.name), compress_to_fp16=False)
    return OpenVINOExport(path, len(done), tuple(sorted(kinds)), kv_cache)
