"""TensorRT's rules for explicit-quantization (QDQ) graphs, checked on an ONNX graph.

TensorRT builds int8 kernels from QuantizeLinear/DequantizeLinear placement. What it needs, from
its "Working with Quantized Types" guide:

* int8, symmetric: every Q/DQ zero point is 0, scales are positive;
* weights of Conv/MatMul/Gemm are int8 constants behind a DequantizeLinear (per output channel);
* the activation inputs of Conv/MatMul/Gemm come from a DequantizeLinear (through layout-only ops
  such as Transpose/Reshape, which TensorRT moves Q/DQ across);
* an Add fed by a Conv (the residual of Conv-BN-Add) has DequantizeLinear on both inputs, so the
  Add fuses into the Conv as an int8 epilogue;
* no DequantizeLinear feeds an op TensorRT cannot run in int8 after it (LayerNorm, Softmax, ...):
  such a pair only adds work.

Example:
    >>> import onnx
    >>> tensorrt_violations(onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], [])))
    []
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["tensorrt_violations"]

_COMPUTE = ("Conv", "MatMul", "Gemm")
# Ops TensorRT propagates Q/DQ through, or fuses with a preceding DequantizeLinear.
_LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast")
_DQ_CONSUMERS = _COMPUTE + _LAYOUT + ("Add", "Gather", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool")


def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims is not None:
            try:
                values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            except (ValueError, TypeError):
                continue
    return values


def tensorrt_violations(model) -> list[str]:
    """Every place where an ONNX QDQ graph breaks TensorRT's explicit-quantization rules.

    Args:
        model: an `onnx.ModelProto`.

    Returns:
        Human-readable violations; an empty list means the graph follows the rules.

    Example:
        >>> tensorrt_violations.__name__
        'tensorrt_violations'
    """
    constants = _constants(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems = []

    def source(name: str):
        # Walk back through layout-only ops to the op that computed the value.
        node = producer.get(name)
        while node is not None and node.op_type in _LAYOUT and node.input:
            node = producer.get(node.input[0])
        return node

    def is_constant(name: str) -> bool:
        node = source(name)
        return name in constants or (node is not None and node.op_type == "Constant")

    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = constants.get(node.input[2]) if len(node.input) > 2 else None
            if zero_point is not None and (zero_point.dtype != np.int8 or np.any(zero_point != 0)):
                problems.append(f"{node.name}: zero point must be int8 0 (symmetric), got {zero_point.dtype} values")
            if node.op_type == "DequantizeLinear":
                bad = {c.op_type for c in consumers.get(node.output[0], [])} - set(_DQ_CONSUMERS)
                if bad:
                    problems.append(f"{node.name}: feeds {sorted(bad)}, which TensorRT cannot run in int8")
        elif node.op_type in _COMPUTE:
            inputs = [n for n in node.input[:2] if n]
            for name in inputs:
                origin = source(name)
                if origin is None or origin.op_type != "DequantizeLinear":
                    kind = "weight" if is_constant(name) else "input"
                    problems.append(f"{node.name} ({node.op_type}): {kind} {name!r} has no DequantizeLinear before it")
        elif node.op_type == "Add" and len(node.input) == 2 and not any(is_constant(n) for n in node.input):
            origins = [source(n) for n in node.input]
            fed_by_conv = any(_through_qdq(o, producer) == "Conv" for o in origins)
            if fed_by_conv and not all(o is not None and o.op_type == "DequantizeLinear" for o in origins):
                problems.append(f"{node.name}: residual Add after a Conv needs DequantizeLinear on both inputs")
    return problems


def _through_qdq(node, producer) -> str | None:
    # The op behind a (Q, DQ) pair, or the node's own type.
    seen: Iterable = ("QuantizeLinear", "DequantizeLinear", "BatchNormalization", "Relu", "Clip")
    while node is not None and node.op_type in seen and node.input:
        node = producer.get(node.input[0])
    return None if node is None else node.op_type
