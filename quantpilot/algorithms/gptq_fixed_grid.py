"""GPTQ onto a grid fixed in advance: the W8A8 layer's own per-channel int8 grid, after SmoothQuant.

Weight-only GPTQ (`quantpilot.algorithms.gptq`) chooses its grids and packs unsigned codes. A W8A8 layer
already has its grid: the weight calibrator's per-channel scale (and zero point) of the smoothed weight,
which the engine's int8 GEMM reads. Here the column sweep only decides the codes on that grid, each column's
rounding error pushed onto the columns not yet quantized through the Hessian of the layer's (smoothed)
inputs, and returns the weight as those codes dequantized: the layer then stores exactly these codes.

SmoothQuant moves activation outliers into weight columns; rounding those columns is what costs a W8A8
encoder most of its error (MiniLM, every Linear int8 after SmoothQuant 0.8: embedding cosine 0.9981 with
round to nearest, 0.9985 with this sweep; `benchmarks/README.md`). llm-compressor's W8A8 recipe is the
same pairing: SmoothQuant, then GPTQ.

Example:
    >>> import torch
    >>> from quantpilot import QuantSpec
    >>> w = torch.tensor([[0.304, -0.702, 1.1]])
    >>> out = gptq_on_grid(w, torch.eye(3), torch.tensor([0.01]), torch.tensor([0]), QuantSpec("int8"))
    >>> (out / 0.01).round().tolist()  # no cross terms in an identity Hessian: round to nearest
    [[30.0, -70.0, 110.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..batches import call_model, eval_mode
from ..spec import PerChannel, PerTensor, QuantSpec
from ..surgery import observe
from .gptq_hessian import HessianAccumulator, hessian_factor

__all__ = ["gptq_on_grid", "fits_fixed_grid", "input_hessians", "gptq_installed_layers", "MAX_HESSIAN_BYTES"]


def _per_row(values: torch.Tensor, rows: int) -> torch.Tensor:
    # A per-tensor qparam (one value) or a per-channel one ((out,) or (out, 1)) as one value per row.
    flat = values.detach().float().reshape(-1)
    return flat.expand(rows).clone() if flat.numel() == 1 else flat.clone()


def fits_fixed_grid(spec: QuantSpec) -> bool:
    """True for weights `gptq_on_grid` takes: integer codes, per tensor or per output channel.

    Example:
        >>> from quantpilot import QuantSpec, PerGroup
        >>> fits_fixed_grid(QuantSpec("int8")), fits_fixed_grid(QuantSpec("uint4", granularity=PerGroup(32)))
        (True, False)
    """
    granularity = spec.granularity
    return not spec.dtype.is_float and (isinstance(granularity, PerTensor) or granularity == PerChannel(0))


def gptq_on_grid(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    spec: QuantSpec,
    *,
    damp: float = 0.01,
    block_size: int = 128,
) -> torch.Tensor:
    """The weight's GPTQ codes on the given grid, dequantized: `(q - zero_point) * scale`, shape of `weight`.

    Args:
        weight: float (out_features, in_features), as the layer multiplies it (already smoothed).
        hessian: (in_features, in_features) second moment of the inputs the weight multiplies (smoothed too).
        scale, zero_point: the grid, per tensor or per output channel (the layer's `weight_qparams()`).
        spec: the weight's scheme; PerChannel(0) or PerTensor, integer codes.
        damp: fraction of the mean Hessian diagonal added to its diagonal.
        block_size: columns per lazy update.

    Raises:
        ValueError: grouped or fp8 weights (they have their own GPTQ), shapes that disagree.

    Example:
        >>> import torch
        >>> from quantpilot import QuantSpec
        >>> w = torch.randn(4, 8)
        >>> s = w.abs().amax(1) / 127
        >>> out = gptq_on_grid(w, torch.eye(8), s, torch.zeros(4), QuantSpec("int8", symmetric=True))
        >>> bool(((out / s[:, None]).round() - out / s[:, None]).abs().max() < 1e-4)
        True
    """
    if not fits_fixed_grid(spec):
        raise ValueError(f"GPTQ on a fixed grid takes per-tensor or per-output-channel integer weights, got {spec}")
    rows, columns = weight.shape
    if hessian.shape != (columns, columns):
        raise ValueError(f"hessian must be {(columns, columns)} for a weight of shape {(rows, columns)}")
    factor = hessian_factor(hessian, damp)
    u = factor.u
    w = weight.detach().float().clone()
    w[:, factor.dead] = 0.0  # inputs that never fire carry no information (as weight-only GPTQ does)
    s, z = _per_row(scale, rows), _per_row(zero_point, rows)
    qmin, qmax = float(spec.qmin), float(spec.qmax)
    out = torch.empty_like(w)
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        block = w[:, i1:i2].clone()
        errors = torch.zeros_like(block)
        for i in range(i2 - i1):
            column = block[:, i]
            dequantized = ((column / s).round() + z).clamp(qmin, qmax).sub(z).mul(s)
            out[:, i1 + i] = dequantized
            error = (column - dequantized) / u[i1 + i, i1 + i]
            block[:, i + 1 :] -= error[:, None] * u[i1 + i, i1 + i + 1 : i2][None, :]
            errors[:, i] = error
        w[:, i2:] -= errors @ u[i1:i2, i2:]
    return out.to(weight.dtype)


# Hessians of every target are held at once (each layer's grid waits for the quantizers' install): beyond
# this many bytes the model is an LLM, for which weight-only GPTQ streams block by block.
MAX_HESSIAN_BYTES = 4 << 30


def input_hessians(model: nn.Module, names: Sequence[str], batches: Sequence[Any]) -> dict[str, HessianAccumulator]:
    """`2 XᵀX / n` of each named Linear's inputs over `batches`, on the float model.

    Raises:
        ValueError: the Hessians would not fit in `MAX_HESSIAN_BYTES`, or a layer saw no input.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        >>> [round(v, 4) for v in input_hessians(net, ["0"], [torch.eye(3)])["0"].hessian.diagonal().tolist()]
        [0.6667, 0.6667, 0.6667]
    """
    modules = dict(model.named_modules())
    widths = {n: _in_features(modules[n]) for n in names}
    total = sum(4 * w * w for w in widths.values())
    if total > MAX_HESSIAN_BYTES:
        raise ValueError(
            f"GPTQ on int8 grids holds every layer's Hessian at once ({total / 2**30:.1f} GiB here): for a model "
            "this size use weight-only GPTQ (Recipe.preset('w4a16-g128') or 'w8a16') or fewer layers"
        )
    accumulators = {n: HessianAccumulator(w) for n, w in widths.items()}

    def record(name: str, args: tuple, _kwargs: dict) -> None:
        x = args[0].detach().float()
        accumulators[name].add(x.reshape(-1, x.shape[-1]))

    with observe(model, list(names), before=record), eval_mode(model), torch.no_grad():
        for batch in batches:
            call_model(model, batch)
    starved = [n for n, acc in accumulators.items() if acc.tokens == 0]
    if starved:
        raise ValueError(f"layers {starved[:3]} saw no input in the calibration batches: skip them or check the data")
    return accumulators


def _in_features(module: nn.Module) -> int:
    if type(module).__name__ == "Conv1D":
        return int(module.weight.shape[0])  # transformers' Conv1D holds its weight as (in, out)
    return int(module.in_features)


def gptq_installed_layers(
    model: nn.Module, hessians: dict[str, HessianAccumulator], *, damp: float = 0.01, block_size: int = 128
) -> list[str]:
    """Replace each installed QuantLinear's float weight by its GPTQ codes on the layer's own grid, dequantized,
    and pin that grid so that `freeze` stores exactly these codes.

    Runs after SmoothQuant smoothed the layers: the Hessian is rescaled by the layer's `input_smoothing`
    (the inputs it quantizes are `x / s`), exactly, without a second pass over the data.

    Returns:
        The names of the layers changed.

    Example:
        >>> import torch
        >>> from quantpilot.nn import QuantLinear
        >>> net = torch.nn.Sequential(QuantLinear.from_float(torch.nn.Linear(3, 2)))
        >>> acc = HessianAccumulator(3); acc.add(torch.randn(16, 3))
        >>> gptq_installed_layers(net, {"0": acc})
        ['0']
    """
    modules = dict(model.named_modules())
    done = []
    for name, accumulator in hessians.items():
        layer = modules.get(name)
        if layer is None or getattr(layer, "weight_spec", None) is None or layer.is_frozen:
            continue
        hessian = accumulator.hessian
        smoothing = getattr(layer, "input_smoothing", None)
        if smoothing is not None:
            s = smoothing.float()
            hessian = hessian / (s[:, None] * s[None, :])
        scale, zero_point = (t.detach().clone() for t in layer.weight_qparams())
        weight = gptq_on_grid(layer.weight, hessian, scale, zero_point, layer.weight_spec, damp=damp,
                              block_size=block_size)  # fmt: skip
        # A new tensor, not a write into the old one: the float model may share it (GPTQ only reads weights).
        layer.weight = nn.Parameter(weight, requires_grad=layer.weight.requires_grad)
        # Pinned as QAT pins a learned scale: recomputing min-max from the new weight could move the grid
        # (a row's largest code may have rounded down) and re-round every code.
        layer.weight_scale = nn.Parameter(scale, requires_grad=False)
        layer.register_buffer("weight_zero_point", zero_point)
        done.append(name)
    return done
