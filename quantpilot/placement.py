"""Where Q/DQ go, by target: int8 placements per model kind, engine and CPU, best first.

Which layers should run int8 depends on what the engine fuses on the CPU at hand. On AMX CPUs
bf16 matrix units are fast, so an int8 op only pays where its kernel is much faster than bf16 and
its Q/DQ fuse into neighbours; elsewhere (depthwise convolutions, a first convolution with three
input channels) the layer is better left float, and the engine runs it in bf16. On AVX-512-VNNI
CPUs without AMX int8 wins almost everywhere. The placements below come from OpenVINO per-op
profiles (`benchmarks/profile_openvino.py`, written up in `benchmarks/README.md`).

`placements_for(kind, engine, cpu)` lists `(name, Recipe)` candidates, the expected best first;
the autopilot measures between them. `engine_options(engine, cpu)` gives the compile options that
go with them (bf16 for the float ops on a CPU with AMX).

Example:
    >>> [name for name, _ in placements_for("cnn", "openvino", {"amx_int8": True})][:1]
    ['int8-sym']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .recipe import Recipe
from .spec import PerTensor, QuantSpec

__all__ = ["placements_for", "engine_options", "depthwise_layers", "has_amx", "MODEL_KINDS"]

MODEL_KINDS = ("transformer", "cnn")
_ALIASES = {"minilm": "transformer", "bert": "transformer", "efficientnet": "cnn", "efficientnet-lite0": "cnn"}
ENGINES = ("openvino", "onnxruntime", "torch-int8")

# Name patterns of depthwise convolutions in the common CNN code bases (EfficientNet's
# `_depthwise_conv`, timm's `conv_dw`, torchvision MobileNet's grouped `conv.1.0`): used when no model
# is given to find them by their `groups`.
_DEPTHWISE_PATTERNS = ("*depthwise*", "*conv_dw*", "*dwconv*")
_SYMMETRIC_INT8 = QuantSpec("int8", symmetric=True, granularity=PerTensor())


def has_amx(cpu: Mapping[str, Any] | None = None) -> bool:
    """True when the CPU has AMX int8/bf16 tiles (`cpu` is `machine.cpu_report()` or its `flags`).

    Example:
        >>> has_amx({"flags": {"amx_int8": False}}), has_amx({"amx_int8": True})
        (False, True)
    """
    if cpu is None:
        from .machine import cpu_report

        cpu = cpu_report()
    flags = cpu.get("flags", cpu)
    return bool(flags.get("amx_int8") or flags.get("amx_bf16"))


def depthwise_layers(model) -> tuple[str, ...]:
    """Qualified names of the depthwise convolutions (groups == in_channels > 1) of `model`.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Conv2d(8, 4, 1))
        >>> depthwise_layers(net)
        ('0',)
    """
    import torch

    return tuple(
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels
    )


def _kind(model_kind: str) -> str:
    kind = _ALIASES.get(model_kind, model_kind)
    if kind not in MODEL_KINDS:
        raise ValueError(f"model_kind={model_kind!r}: use one of {list(MODEL_KINDS) + sorted(_ALIASES)}")
    return kind


def placements_for(
    model_kind: str, engine: str = "openvino", cpu: Mapping[str, Any] | None = None, model=None
) -> list[tuple[str, Recipe]]:
    """Candidate int8 placements for `model_kind` on `engine` and `cpu`, the expected fastest first.

    Args:
        model_kind: "transformer" (attention models) or "cnn" (torch.fx-traceable convolutional nets).
        engine: "openvino", "onnxruntime" or "torch-int8".
        cpu: `quantpilot.machine.cpu_report()` (or its flags); None reads this machine's.
        model: the float model, to find its depthwise convolutions by their groups; without it they are
            found by name (`*depthwise*`, `*conv_dw*`, `*dwconv*`).

    Returns:
        `[(name, Recipe)]`; every name is unique, and each recipe's `notes["placement"]` says why it exists.

    Example:
        >>> names = [n for n, _ in placements_for("transformer", "openvino", {"amx_int8": False})]
        >>> names[0]
        'int8-matmul'
    """
    kind = _kind(model_kind)
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: use one of {list(ENGINES)}")
    amx = has_amx(cpu)
    if kind == "transformer":
        out = _transformer(engine, amx)
    else:
        depthwise = depthwise_layers(model) if model is not None else _DEPTHWISE_PATTERNS
        out = _cnn(engine, amx, depthwise)
    return [(name, recipe.replace(name=name, notes={**recipe.notes, "placement": why})) for name, recipe, why in out]


def _transformer(engine: str, amx: bool) -> list[tuple[str, Recipe, str]]:
    base = Recipe.preset("int8-static")
    matmul = base.replace(ops=("matmul",))
    layers = (
        "int8-layers",
        base,
        "every Linear int8, attention matmuls float: fewer Q/DQ; slower where the engine fuses int8 attention",
    )
    if engine == "torch-int8":
        return [layers]
    with_matmul = ("int8-matmul", matmul, "every Linear and both attention matmuls int8 (symmetric matmul inputs)")
    sym = (
        "int8-matmul-sym",
        matmul.replace(activations=_SYMMETRIC_INT8),
        "symmetric activations everywhere: no zero-point compensation in the int8 GEMMs",
    )
    # Same order on both ISAs until a profile says otherwise: int8 attention is what lifts MiniLM
    # above bf16 (issue 18's table); symmetric activations drop the zero-point work in the GEMMs.
    return [with_matmul, sym, layers]


def _cnn(engine: str, amx: bool, depthwise: tuple[str, ...]) -> list[tuple[str, Recipe, str]]:
    base = Recipe.preset("int8-static")
    sym = base.replace(activations=_SYMMETRIC_INT8)
    # Percentile 99.99 under symmetric ranges: top-1 0.8675 on the 400 photos, against 0.865 for the
    # MSE histogram and min-max (FP32 0.8725); same graph, so same speed.
    percentile = {"kind": "histogram", "method": "percentile", "percentile": 99.99}
    symmetric = (
        "int8-sym",
        sym.replace(activation_calibrator=percentile),
        "every convolution int8, symmetric activations: OpenVINO keeps int8 chains int8 and runs the rest in "
        "bf16 (EfficientNet-Lite0 on AMX: 1.26x OpenVINO bf16, 1.19x NNCF)",
    )
    pointwise = (
        "int8-sym-pointwise",
        sym.replace(skip=tuple(depthwise)),
        "depthwise convolutions float: the bf16<->int8 reorders around them cost more than their int8 kernel saves "
        "on AMX (0.97x OpenVINO bf16); kept for engines without int8 depthwise kernels",
    )
    everything = ("int8-all", base, "every convolution int8, asymmetric activations (best accuracy)")
    adds = ("int8-all+add", base.replace(ops=("add",)), "every convolution and both inputs of residual adds int8")
    if amx and engine == "openvino":
        # Asymmetric (zero-point) activations are left out: OpenVINO 2026.4 with bf16 float ops refuses
        # them on EfficientNet-Lite0 ("No suitable implementations" for an int8 conv feeding an int8 conv).
        return [symmetric, pointwise]
    if amx:
        return [symmetric, everything, pointwise]
    return [adds, everything, symmetric]


def engine_options(engine: str, cpu: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Compile options for running a placement: on AMX the float ops of an int8 model run in bf16.

    Example:
        >>> engine_options("openvino", {"amx_bf16": True})
        {'dtype': 'bfloat16'}
    """
    if engine == "openvino" and has_amx(cpu):
        return {"dtype": "bfloat16"}
    return {}
