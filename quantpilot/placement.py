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
    >>> [name for name, _ in placements_for("cnn", "openvino", {"amx_int8": True})][:2]
    ['int8-u8', 'int8-sym']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .calibrator_config import CalibratorConfig
from .recipe import Recipe
from .spec import PerTensor, QuantSpec
from .steps import GPTQ, SmoothQuant

__all__ = ["placements_for", "engine_options", "depthwise_layers", "ffn_down_layers", "has_amx", "MODEL_KINDS"]

MODEL_KINDS = ("transformer", "cnn")
_ALIASES = {"minilm": "transformer", "bert": "transformer", "efficientnet": "cnn", "efficientnet-lite0": "cnn"}
ENGINES = ("openvino", "onnxruntime", "torch-int8")

# Name patterns of depthwise convolutions in the common CNN code bases (EfficientNet's
# `_depthwise_conv`, timm's `conv_dw`, torchvision MobileNet's grouped `conv.1.0`): used when no model
# is given to find them by their `groups`.
_DEPTHWISE_PATTERNS = ("*depthwise*", "*conv_dw*", "*dwconv*")
# Name patterns of feed-forward down projections (their input is the activation function's output): BERT and
# ViT `layer.N.output.dense` (not `attention.output.dense`), Llama `mlp.down_proj`, GPT-2 `mlp.c_proj`, OPT/ViT
# `fc2`, DistilBERT `ffn.lin2`; used when no model is given to find them by their shapes.
_FFN_DOWN_PATTERNS = ("*layer.*[0-9].output.dense", "*.mlp.down_proj", "*.mlp.c_proj", "*.fc2", "*.ffn.lin2")
_SYMMETRIC_INT8 = QuantSpec("int8", symmetric=True, granularity=PerTensor())
_ASYMMETRIC_INT8 = QuantSpec("int8", symmetric=False, granularity=PerTensor())
# Asymmetric activations held as uint8: a non-negative input (after ReLU/ReLU6) gets zero point 0, so OpenVINO
# runs a plain u8 x i8 kernel; the same ranges held as int8 have zero point -128, which OpenVINO compensates on
# a slow path (or, with bf16 float ops, refuses: "No suitable implementations").
_ASYMMETRIC_UINT8 = QuantSpec("uint8", symmetric=False, granularity=PerTensor())


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


def ffn_down_layers(model) -> tuple[str, ...]:
    """Qualified names of the feed-forward down projections of a transformer: the Linears that narrow at least
    twofold back to the model width (the most common output width among its Linears).

    Their input is the activation function's output (GELU's long positive tail, a few huge channels): the
    hardest tensor of a BERT-like model to hold in one int8 range.

    Example:
        >>> import torch
        >>> block = torch.nn.ModuleDict({"q": torch.nn.Linear(8, 8), "up": torch.nn.Linear(8, 32),
        ...                              "down": torch.nn.Linear(32, 8), "head": torch.nn.Linear(8, 2)})
        >>> ffn_down_layers(block)
        ('down',)
    """
    from collections import Counter

    import torch

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        return ()
    width = Counter(m.out_features for _, m in linears).most_common(1)[0][0]
    return tuple(n for n, m in linears if m.out_features == width and m.in_features >= 2 * width)


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
        model: the float model, to find its depthwise convolutions by their groups and its feed-forward down
            projections by their shapes; without it both are found by name (`*depthwise*`, `*mlp.down_proj`...).

    Returns:
        `[(name, Recipe)]`; every name is unique, and each recipe's `notes["placement"]` says why it exists.

    Example:
        >>> names = [n for n, _ in placements_for("transformer", "openvino", {"amx_int8": False})]
        >>> names[0]
        'int8-smooth-sym-gptq'
    """
    kind = _kind(model_kind)
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: use one of {list(ENGINES)}")
    amx = has_amx(cpu)
    if kind == "transformer":
        out = _transformer(engine, amx, ffn_down_layers(model) if model is not None else _FFN_DOWN_PATTERNS)
    else:
        depthwise = depthwise_layers(model) if model is not None else _DEPTHWISE_PATTERNS
        out = _cnn(engine, amx, depthwise)
    return [(name, recipe.replace(name=name, notes={**recipe.notes, "placement": why})) for name, recipe, why in out]


def _transformer(engine: str, amx: bool, ffn_down: tuple[str, ...]) -> list[tuple[str, Recipe, str]]:
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
    # SmoothQuant 0.8 with min-max ranges: MiniLM's held-out cosine 0.9933 -> 0.9978 at the same graph plus one
    # per-channel multiply per smoothed input (benchmarks/README.md).
    smoothed = matmul.replace(steps=(SmoothQuant(alpha=0.8),), activation_calibrator=CalibratorConfig("minmax"))
    smooth = ("int8-smooth", smoothed, "int8-matmul after SmoothQuant 0.8 with min-max ranges: activation "
              "outlier channels moved into the per-channel weight scales")  # fmt: skip
    ffn_float = (
        "int8-smooth-ffn-float",
        smoothed.replace(skip=tuple(ffn_down)),
        "int8-smooth with the feed-forward down projections float (bf16 on AMX): their GELU-output inputs cost "
        "most of the remaining error (MiniLM cosine 0.9978 -> 0.9988)",
    )
    # Same order on both ISAs until a profile says otherwise: int8 attention is what lifts MiniLM
    # above bf16 (issue 18's table); symmetric activations drop the zero-point work in the GEMMs.
    return [_smooth_sym_gptq(matmul, ffn_down), with_matmul, sym, smooth, ffn_float, layers]


def _smooth_sym_gptq(matmul: Recipe, ffn_down: tuple[str, ...]) -> tuple[str, Recipe, str]:
    # MiniLM held-out cosine, fake-quantized (benchmarks/README.md): int8-matmul-sym 0.9854; + SmoothQuant 0.8
    # and min-max 0.9969; FFN down inputs asymmetric 0.9978; MSE ranges there and on the attention matmuls,
    # softmax as uint8 0.9981; GPTQ on the int8 grids 0.9985. Symmetric inputs everywhere else are what
    # make it faster than int8-smooth (no zero-point compensation in 30 of the 36 GEMMs).
    mse = CalibratorConfig("histogram", {"method": "mse"})
    minmax = CalibratorConfig("minmax")
    overrides: dict[str, dict[str, Any]] = {
        pattern: {"activations": _ASYMMETRIC_INT8, "activation_calibrator": mse} for pattern in ffn_down
    }
    overrides["*:matmul"] = {"activation_calibrator": mse}
    overrides["*:matmul.probs"] = {"activations": _ASYMMETRIC_UINT8, "activation_calibrator": minmax}
    recipe = matmul.replace(
        activations=_SYMMETRIC_INT8,
        activation_calibrator=minmax,
        steps=(SmoothQuant(alpha=0.8), GPTQ()),
        overrides=overrides,
    )
    why = (
        "SmoothQuant 0.8 and GPTQ on the int8 grids, symmetric int8 inputs except the feed-forward down "
        "projections' (GELU output: asymmetric), softmax output as uint8 with zero point 0"
    )
    return "int8-smooth-sym-gptq", recipe, why


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
    unsigned = (
        "int8-u8",
        base.replace(activations=_ASYMMETRIC_UINT8, activation_calibrator=percentile),
        "every convolution int8, activations asymmetric uint8: a ReLU6 output uses all 256 codes at zero point 0 "
        "(EfficientNet-Lite0 on AMX, quiet `make bench`: 1.33x OpenVINO bf16 against 1.10x for int8-sym)",
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
        # Asymmetric int8 activations are left out: OpenVINO 2026.4 with bf16 float ops refuses their zero
        # points on EfficientNet-Lite0 ("No suitable implementations" for an int8 conv feeding an int8 conv).
        return [unsigned, symmetric, pointwise]
    if amx:
        return [symmetric, unsigned, everything, pointwise]
    return [adds, everything, symmetric, unsigned]


def engine_options(engine: str, cpu: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Compile options for running a placement: on AMX the float ops of an int8 model run in bf16.

    Example:
        >>> engine_options("openvino", {"amx_bf16": True})
        {'dtype': 'bfloat16'}
    """
    if engine == "openvino" and has_amx(cpu):
        return {"dtype": "bfloat16"}
    return {}
