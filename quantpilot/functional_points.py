"""Quantization points on functional operations: attention matmuls and residual additions.

Module swapping (`quantpilot.nn`) reaches Linear/Conv layers; the attention products and the
residual `+` are plain function calls inside `forward`. Two mechanisms, chosen per model family:

* "matmul" on Hugging Face transformers models: quantpilot's attention implementation, registered
  through transformers' `AttentionInterface` (`quantpilot.nn.attention`), quantizes Q, K, the
  softmax output and V of every attention module. Works for any model written against that
  interface (BERT, RoBERTa, GPT-2, Llama, ...), and the model keeps its class and methods.
* "add" on `torch.fx`-traceable models (CNNs such as EfficientNet-Lite and ResNets): the graph is
  traced and every addition of two computed tensors becomes a `QuantAdd` module, both inputs
  quantized (TensorRT's rule for Conv-BN-Add fusion). The model becomes an `fx.GraphModule`
  with the same submodule names. transformers models do not trace with `torch.fx` and get a
  clear error instead.

Point names, matched by the recipe's `skip` and `overrides` patterns, are the module path plus
the op: "encoder.layer.0.attention.self:matmul", "_blocks.2:add" (".1", ".2" for further adds in
the same module).

Example:
    >>> import torch, quantpilot as qp
    >>> class Residual(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    ...     def forward(self, x):
    ...         return x + self.conv(x)
    >>> qm = qp.quantize(Residual(), qp.Recipe(ops=("add",)))
    >>> functional_points(qm), [name for name, m in qm.named_modules() if type(m).__name__ == "QuantAdd"]
    ([':add'], ['residual_add'])
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
from fnmatch import fnmatch

import torch
from torch import fx, nn

from .nn.attention import ATTRIBUTE, AttentionQuantizers, is_attention_module, use_quantized_attention
from .nn.residual_add import QuantAdd
from .nn.tensor_quantizer import TensorQuantizer
from .recipe import Recipe
from .spec import QuantSpec

__all__ = ["install_matmul_points", "install_add_points", "functional_points"]

_ADD_TARGETS = (operator.add, operator.iadd, torch.add)


def _warn_unreached_attention(model: nn.Module, reached: set[str]) -> None:
    """Name attention modules whose matmuls `ops=("matmul",)` cannot reach (their own code, not the interface)."""
    candidates = {
        name: type(m).__name__
        for name, m in model.named_modules()
        if type(m).__name__.endswith(("Attention", "SelfAttention", "Attention2"))
        and name not in reached
        and not any(name.startswith(f"{r}.") or r.startswith(f"{name}.") for r in reached)
    }
    # The innermost module only: a wrapper (DebertaV2Attention) around the one computing (DisentangledSelfAttention).
    unreached = [f"{n} ({t})" for n, t in candidates.items() if not any(c.startswith(f"{n}.") for c in candidates)]
    if unreached:
        more = f" and {len(unreached) - 3} more" if len(unreached) > 3 else ""
        warnings.warn(
            f'ops=("matmul",) quantizes attention written against transformers\' AttentionInterface; '
            f"{type(model).__name__}'s {', '.join(unreached[:3])}{more} compute their matmuls in their own code, "
            "so those stay float: the Linear layers are still quantized",
            stacklevel=5,  # quantize's caller
        )


def install_matmul_points(model: nn.Module, recipe: Recipe) -> list[str]:
    """Give every attention module of a transformers model its matmul quantizers (in place).

    Returns:
        The point names that got quantizers (none for a model without transformers attention).

    Example:
        >>> import torch, quantpilot as qp
        >>> install_matmul_points(torch.nn.Linear(2, 2), qp.Recipe(ops=("matmul",)))
        []
    """
    attention = [(name, m) for name, m in model.named_modules() if is_attention_module(m)]
    _warn_unreached_attention(model, {name for name, _ in attention})
    if not attention:
        # Like a module type the model does not have: nothing to quantize (a CNN has no attention).
        return []
    use_quantized_attention(model)
    installed = []
    for name, module in attention:
        point = f"{name}:matmul"
        layer = recipe.for_point(point)
        if layer is None:
            continue
        quantizers = AttentionQuantizers(
            _default_symmetric(recipe, layer.activations, point),
            dynamic=layer.dynamic,
            calibrator=layer.activation_calibrator,
        )
        for role in [role for role, _ in quantizers.named_children()]:
            _own_role_scheme(quantizers, recipe, point, role)  # may replace the role's quantizer
            getattr(quantizers, role).qualname = f"{name}.{ATTRIBUTE}.{role}" if name else f"{ATTRIBUTE}.{role}"
        setattr(module, ATTRIBUTE, quantizers)
        installed.append(point)
    return installed


def _default_symmetric(recipe: Recipe, spec: QuantSpec, *names: str) -> QuantSpec:
    # Symmetric unless the recipe says otherwise for this point: OpenVINO runs attention in int8 (fused
    # MHA) only with zero-point-free matmul inputs. Measured on MiniLM: asymmetric inputs left 11 of 12
    # attention MatMuls in f32; symmetric ones fused all 6 blocks in int8.
    if any("activations" in o for p, o in recipe.overrides.items() if any(fnmatch(n, p) for n in names)):
        return spec
    return dataclasses.replace(spec, symmetric=True)


def _own_role_scheme(quantizers: nn.Module, recipe: Recipe, point: str, role: str) -> None:
    # An override naming one input ("*:matmul.probs") gives that input its own scheme: e.g. the softmax output
    # as uint8 with zero point 0, twice the codes of a symmetric int8 grid on a non-negative tensor.
    role_point = f"{point}.{role}"
    if not any(fnmatch(role_point, p) and not fnmatch(point, p) for p in recipe.overrides):
        return
    layer = recipe.for_point(role_point)
    spec = None if layer is None else _default_symmetric(recipe, layer.activations, point, role_point)
    calibrator = None if layer is None else layer.activation_calibrator
    setattr(quantizers, role, TensorQuantizer(spec, dynamic=layer is not None and layer.dynamic, calibrator=calibrator))


def _is_tensor_node(arg: object) -> bool:
    # A computed tensor: not a Python constant, not a parameter/buffer (a bias add is not residual).
    return isinstance(arg, fx.Node) and arg.op not in ("get_attr",)


def install_add_points(model: nn.Module, recipe: Recipe) -> fx.GraphModule:
    """Trace `model` with torch.fx and put a `QuantAdd` on every addition of two computed tensors.

    Returns:
        The traced `GraphModule` (submodule names unchanged; the original model is not modified).

    Raises:
        ValueError: the model cannot be traced by torch.fx (e.g. transformers models).

    Example:
        >>> import torch, quantpilot as qp
        >>> gm = install_add_points(torch.nn.Linear(2, 2), qp.Recipe(ops=("add",)))
        >>> isinstance(gm, torch.fx.GraphModule)
        True
    """
    try:
        traced = fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 (fx raises many types; all mean "not traceable")
        has_attention = any(type(m).__name__.endswith("Attention") or is_attention_module(m) for m in model.modules())
        # The advice fits the model: attention models have matmul points instead; a CNN keeps its int8 convolutions.
        advice = (
            "use ops=('matmul',) for its attention instead"
            if has_attention
            else "its Conv/Linear layers are still quantized without it (the residual additions stay float)"
        )
        raise ValueError(
            f"residual-add quantization traces the model with torch.fx, which failed on {type(model).__name__} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); remove 'add' from the recipe's ops: {advice}"
        ) from None
    counts: dict[str, int] = {}
    for node in list(traced.graph.nodes):
        if node.op != "call_function" or node.target not in _ADD_TARGETS or node.kwargs:
            continue
        if len(node.args) != 2 or not all(_is_tensor_node(a) for a in node.args):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        owner = next(reversed(stack.values()))[0] if stack else ""
        index = counts.get(owner, 0)
        counts[owner] = index + 1
        point = f"{owner}:add" + (f".{index}" if index else "")
        layer = recipe.for_point(point)
        if layer is None:
            continue
        parent = traced.get_submodule(owner) if owner else traced
        child = "residual_add" + (f"_{index}" if index else "")
        quant_add = QuantAdd(layer.activations, dynamic=layer.dynamic, calibrator=layer.activation_calibrator)
        parent.add_module(child, quant_add)
        qadd = parent.get_submodule(child)
        qadd.point = point
        target = f"{owner}.{child}" if owner else child
        qadd.lhs_quantizer.qualname = f"{target}.lhs_quantizer"
        qadd.rhs_quantizer.qualname = f"{target}.rhs_quantizer"
        with traced.graph.inserting_after(node):
            replacement = traced.graph.call_module(target, tuple(node.args))
        node.replace_all_uses_with(replacement)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.recompile()
    return traced


def functional_points(model: nn.Module) -> list[str]:
    """Names of the functional quantization points a quantized model holds.

    Example:
        >>> import torch
        >>> functional_points(torch.nn.Linear(2, 2))
        []
    """
    out = []
    for name, module in model.named_modules():
        if isinstance(module, AttentionQuantizers):
            out.append(name.rpartition(".")[0] + ":matmul")
        elif isinstance(module, QuantAdd):
            out.append(module.point)
    return out
