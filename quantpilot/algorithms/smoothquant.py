"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights, then quantize W8A8.

Activations of transformers have a few channels with values 10-100x the rest; one per-tensor
scale then wastes most int8 codes on them. SmoothQuant divides each input channel j by
`s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)` and multiplies the weight's column j by the same
factor, which leaves the float product unchanged and splits the difficulty between the two.

Post-LN encoders (BERT) feed the LayerNorm output both to the next Linear and to the residual
branch, so the division cannot be folded into the LayerNorm exactly; quantpilot keeps it as an
explicit per-channel divide in front of the layer's input quantizer (a Mul in the exported
graph, as NNCF does when it cannot fold).

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> batches = [torch.randn(32, 16) for _ in range(4)]
    >>> qmodel = qp.algorithms.smoothquant(net, batches, alpha=0.5)
    >>> qmodel[0].input_smoothing.shape
    torch.Size([16])
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..api import run_pipeline
from ..batches import call_model, eval_mode
from ..deferred import CHOICES_ATTR
from ..recipe import OUTPUT_HEADS, Recipe
from ..surgery import observe

__all__ = ["smoothquant", "smoothing_factors", "shared_input_factors", "MIN_CALIBRATION_ROWS"]

MIN_CALIBRATION_ROWS = 64


def smoothing_factors(act_amax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """`s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha)` for a `(out, in)` weight.

    Args:
        act_amax: per-input-channel max |x| from calibration, shape `(in,)`.
        weight: the float weight, shape `(out, in)`.
        alpha: migration strength in [0, 1] (0: nothing moves, 1: all into the weight).

    Returns:
        Positive factors, shape `(in,)`.

    Example:
        >>> import torch
        >>> smoothing_factors(torch.tensor([4.0, 1.0]), torch.ones(3, 2), 0.5).tolist()
        [2.0, 1.0]
    """
    # Floors keep dead channels (never active, or an all-zero weight column) finite and unchanged in scale.
    a = act_amax.float().clamp(min=1e-5)
    w = weight.detach().abs().amax(dim=0).float().clamp(min=1e-5)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).clamp(min=1e-5)


def _input_statistics(
    model: nn.Module, names: set[str], batches: Sequence[Any]
) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, tuple]]:
    """Per-channel max |x| of each named layer's input, how many input rows it saw, and which tensors it read
    (layers with equal entries read the same tensor in every call: q/k/v after one LayerNorm)."""
    amax: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}
    sources: dict[str, list] = {}
    # This call's inputs so far, each with the first layer that read it. Weak references: a tensor freed
    # mid-call (ln_1's output once attention is done) can hand its id and memory to the next one (ln_2's),
    # so only the very object, alive, proves two layers read the same input.
    seen: list[tuple[weakref.ref, str]] = []

    def record(name: str, args: tuple, _kwargs: dict) -> None:
        first = next((owner for ref, owner in seen if ref() is args[0]), None)
        if first is None:
            seen.append((weakref.ref(args[0]), name))
        sources.setdefault(name, []).append((calls, first or name))
        x = args[0].detach().float()
        x = x.reshape(-1, x.shape[-1])
        batch_amax = x.abs().amax(dim=0)
        amax[name] = batch_amax if name not in amax else torch.maximum(amax[name], batch_amax)
        rows[name] = rows.get(name, 0) + x.shape[0]

    calls = 0
    layers = {n: m for n, m in model.named_modules() if n in names}
    with observe(model, layers, before=record), eval_mode(model), torch.no_grad():
        for batch in batches:
            call_model(model, batch)
            calls += 1
            seen.clear()
    return amax, rows, {n: tuple(v) for n, v in sources.items()}


def shared_input_factors(
    amax: dict[str, torch.Tensor], sources: dict[str, tuple], weights: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Smoothing factors per layer, one vector for the layers reading the same tensor (q/k/v, gate/up).

    As the paper's reference does: the weight side of the balance is the largest |W| over all of them, so
    each such input is divided once; an engine then runs one multiply and one quantizer for the group
    (MiniLM in OpenVINO: 12 fewer element-wise ops, same accuracy).

    Example:
        >>> import torch
        >>> a = {"q": torch.tensor([4.0, 1.0]), "k": torch.tensor([4.0, 1.0])}
        >>> w = {"q": torch.ones(2, 2), "k": 4 * torch.ones(2, 2)}
        >>> f = shared_input_factors(a, {"q": (1,), "k": (1,)}, w, 0.5)
        >>> f["q"].tolist() == f["k"].tolist() == [1.0, 0.5]
        True
    """
    groups: dict[tuple, list[str]] = {}
    for name in weights:
        groups.setdefault(sources.get(name, (name,)), []).append(name)
    factors: dict[str, torch.Tensor] = {}
    for members in groups.values():
        joined = torch.cat([weights[n].detach() for n in members])
        shared = smoothing_factors(amax[members[0]], joined, alpha)
        factors.update({n: shared.clone() for n in members})  # own tensors: a saved file keeps each layer's
    return factors


def _with_activations(recipe: Recipe | str | None, activations: str | None) -> Recipe | str:
    """The recipe (None: the decoder default) with its activations replaced by "static" or "dynamic" ranges."""
    if recipe is None:
        recipe = Recipe.preset("int8-static").replace(module_types=("Linear", "Conv1D"), skip=OUTPUT_HEADS)
    if activations is None:
        return recipe
    base = Recipe.preset(recipe) if isinstance(recipe, str) else recipe
    if not isinstance(base, Recipe):
        raise TypeError(f"recipe must be a quantpilot.Recipe or a preset name, got {type(recipe).__name__}")
    if activations == "static":
        return base.replace(activations=Recipe().activations, dynamic=False)
    if activations == "dynamic":
        return base.replace(activations="dynamic", dynamic=True)
    raise ValueError(
        f"activations must be 'static' (per tensor, calibrated) or 'dynamic' (per token), got {activations!r}"
    )


def _shared_parameters(model: nn.Module) -> set[int]:
    """ids of parameters registered in more than one place (tied weights)."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return {pid for pid, n in counts.items() if n > 1}


def smoothquant(
    model: nn.Module,
    calib_batches: Iterable[Any],
    alpha: float = 0.5,
    recipe: Recipe | str | None = None,
    *,
    activations: str | None = None,
    layers: Sequence[str] = ("*",),
    inplace: bool = False,
) -> nn.Module:
    """Smooth, quantize, calibrate and freeze: a W8A8 model ready to save or export.

    Args:
        model: the float model (left unchanged unless `inplace`).
        calib_batches: calibration inputs (re-iterated twice: statistics, then calibration).
        alpha: migration strength in [0, 1]; 0.5 is the paper's default, encoders with strong
            outlier channels (all-MiniLM-L6-v2) do better near 0.7.
        recipe: the W8A8 recipe (static or dynamic activations; layers whose activations stay
            float are not smoothed). None: "int8-static" on the Linear (and GPT-2 Conv1D) layers
            only, with the output head `lm_head` left float, as the paper quantizes decoders.
        activations: "static" (one per-tensor range from calibration, the paper's O3 setting) or
            "dynamic" (one range per token computed at run time, the paper's O1); replaces the
            recipe's activation scheme. None keeps the recipe's.
        layers: fnmatch patterns of the Linear layers to smooth. A layer whose weight is shared with
            another module (a head tied to the embedding) is quantized but never smoothed: scaling
            its weight in place would change the embedding too.
        inplace: quantize `model` itself.

    Returns:
        The frozen quantized model; `model.quantpilot_smoothing` maps each smoothed layer to its alpha.
        A thin wrapper over the pipeline: the recipe gets a `quantpilot.steps.SmoothQuant(alpha)` step
        (`qp.recipe_of(result)` returns it) and `quantize` / `calibrate` / `freeze` run it.

    Raises:
        ValueError: bad alpha, no layer to smooth, or fewer than `MIN_CALIBRATION_ROWS` input rows.

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8))
        >>> qm = qp.algorithms.smoothquant(net, [torch.randn(64, 8)], alpha=0.7)
        >>> sorted(qm.quantpilot_smoothing)
        ['0']
    """
    from ..steps import SmoothQuant

    step = SmoothQuant(alpha=alpha, layers=tuple(layers) if not isinstance(layers, str) else layers)
    recipe = _with_activations(recipe, activations)
    base = Recipe.preset(recipe) if isinstance(recipe, str) else recipe
    batches = list(calib_batches)
    if not batches:
        raise ValueError("smoothquant needs calibration batches (about 128 sequences is the usual amount)")
    others = tuple(s for s in base.steps if s.name != SmoothQuant.name)
    qmodel = run_pipeline(model, base.replace(steps=(*others, step)), batches, inplace=inplace)
    qmodel.quantpilot_smoothing = qmodel.__dict__.get(CHOICES_ATTR, {}).get("smoothquant", {})
    return qmodel
