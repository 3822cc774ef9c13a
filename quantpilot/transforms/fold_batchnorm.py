"""Fold each BatchNorm that directly follows a convolution into that convolution's weight and bias.

At inference a BatchNorm is an affine map per channel, `y = (x - mean) * gamma / sqrt(var + eps) + beta`.
Applied to a convolution's output it merges into the convolution:
`w' = w * s` (per output channel) and `b' = (b - mean) * s + beta`, with `s = gamma / sqrt(var + eps)`.
Quantizing after folding matters: an int8 engine runs Conv+BN as one convolution, so the weight that
gets quantized must be the folded one, and the BN must not sit between the Conv and its quantized output.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    >>> x = torch.randn(1, 3, 8, 8)
    >>> torch.allclose(fold_batchnorm(net)(x), net(x), atol=1e-5)
    True
"""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

__all__ = ["fold_batchnorm"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _pairs_by_graph(model: nn.Module) -> list[tuple[str, str]] | None:
    """(conv, bn) module names where the BN's only input is the conv's output and nothing else reads it.

    Returns None when the model cannot be traced symbolically.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure means "use the module-order rule"
        return None
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _NORMS):
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        if not isinstance(model.get_submodule(source.target), _CONVS):
            continue
        # A conv output read elsewhere too (or a module called twice) would change meaning when folded.
        if len(source.users) != 1 or calls[source.target] != 1 or calls[node.target] != 1:
            continue
        pairs.append((source.target, node.target))
    return pairs


def _pairs_by_order(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) names of a Conv immediately followed by a BatchNorm inside an `nn.Sequential`."""
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if isinstance(conv, _CONVS) and isinstance(bn, _NORMS):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + conv_name, prefix + bn_name))
    return pairs


def _fold_pair(conv: nn.Module, bn: nn.Module, where: str) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"{where}: BatchNorm without running statistics (track_running_stats=False) normalises with each "
            "batch's own statistics and cannot be folded; train it with running statistics or leave it unfolded"
        )
    if bn.num_features != conv.out_channels:
        raise ValueError(f"{where}: BatchNorm has {bn.num_features} channels, the conv {conv.out_channels}")
    with torch.no_grad():
        # float64 so that folding adds no rounding beyond the final cast back to the weight dtype.
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        dtype = conv.weight.dtype
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        conv.weight.copy_(weight.to(dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.to(dtype), requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(bias.to(dtype))


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows a Conv1d/2d/3d into it, and replace the BN by `nn.Identity`.

    Pairs are found with `torch.fx.symbolic_trace` when the model traces: a BN whose input is a
    convolution's output that nothing else reads (and neither module is called twice), anywhere in the
    model. A model that does not trace (data-dependent control flow, most transformers) falls back to
    module order: a Conv immediately followed by a BatchNorm inside the same `nn.Sequential`. The model's
    own classes are kept (the graph only finds the pairs; it does not replace the model).

    The fold uses the BN's running statistics, i.e. its inference behaviour: the result equals the
    model in eval mode (to float rounding, about 1e-6 relative).

    Args:
        model: a float model (quantize after folding, not before).
        inplace: change `model` itself instead of a deep copy.

    Returns:
        The model with folded convolutions; the folded BNs are `nn.Identity`.

    Raises:
        TypeError: `model` is not an `nn.Module`.
        ValueError: a BN to fold has no running statistics.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 1, bias=False), torch.nn.BatchNorm1d(3)).eval()
        >>> folded = fold_batchnorm(net)
        >>> folded[0].bias is not None, type(net[1]).__name__
        (True, 'BatchNorm1d')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    target = model if inplace else copy.deepcopy(model)
    pairs = _pairs_by_graph(target)
    if pairs is None:
        pairs = _pairs_by_order(target)
    for conv_name, bn_name in pairs:
        _fold_pair(target.get_submodule(conv_name), target.get_submodule(bn_name), f"{conv_name} + {bn_name}")
        parent_name, _, child = bn_name.rpartition(".")
        parent = target.get_submodule(parent_name) if parent_name else target
        setattr(parent, child, nn.Identity())
    return target
