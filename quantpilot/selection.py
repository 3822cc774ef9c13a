"""`select`: hybrid and selective quantization, driven by measurements on the user's own metric.

* hybrid: quantize everything the recipe says, then leave the most harmful layers (ranked by a
  sensitivity sweep) in float, one at a time, until the metric is within budget of FP32; then try to
  re-quantize each of them again, so the float set ends up small.
* selective: int8-preserving fixes before float layers, because every float layer costs an engine its
  int8 kernel and the fusions around it. First quantize the functional ops the model has (both inputs of
  residual adds, so that an engine keeps Conv+Add fused in int8; attention matmuls); then give every
  layer and point the activation calibrator (min-max, percentile, entropy, MSE) whose quantized output
  is closest (least MSE) to the float one on the calibration data, kept if the task metric agrees; then,
  most harmful unit first, the candidate calibrator with the best task metric; only then hybrid on top.

Calibration runs once; every candidate is frozen from those statistics (`analysis.CalibrationStatistics`).
The result is a plain `Recipe`: `skip` holds the float layers, `overrides` the calibrators, `notes` why.

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> data = [torch.randn(64, 8)]
    >>> with torch.no_grad():
    ...     ref = net(data[0]).argmax(1)
    ...     agree = lambda m: float((m(data[0]).argmax(1) == ref).float().mean())
    ...     recipe = select(net, qp.Recipe(), data, agree, budget=0.0)
    >>> recipe.notes["select"].startswith("met the budget")
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from . import selection_stages as stages
from .analysis.statistics import CalibrationStatistics
from .nn.tensor_quantizer import CalibratorConfig
from .recipe import Recipe
from .selection_calibrators import (
    CANDIDATE_CALIBRATORS,
    _repair_calibrators,  # noqa: F401  (re-exported: tests drive the repair directly)
    calibrator_label,
    choose_calibrators,
)
from .selection_stages import SMOOTHQUANT_NOTE, STRATEGIES, with_functional_ops  # noqa: F401  (with_functional_ops: re-exported)
from .steps import SmoothQuant

__all__ = [
    "select",
    "choose_calibrators",
    "calibrator_label",
    "smoothquant_alpha",
    "build",
    "CANDIDATE_CALIBRATORS",
    "STRATEGIES",
    "SMOOTHING_ALPHAS",
]

# The SmoothQuant migration strengths selective tries (0.5: the paper's default; 0.8: all-MiniLM-L6-v2's
# outlier channels, measured in benchmarks/bench_engines.py), and the note that records the choice.
SMOOTHING_ALPHAS = (0.5, 0.8)


def smoothquant_alpha(recipe: Recipe) -> float | None:
    """The alpha of the recipe's SmoothQuant step (or, for a recipe written before steps, its note), or None.

    Example:
        >>> import quantpilot as qp
        >>> smoothquant_alpha(qp.Recipe(steps=(qp.steps.SmoothQuant(alpha=0.8),)))
        0.8
        >>> smoothquant_alpha(qp.Recipe()) is None
        True
    """
    for step in recipe.steps:
        if isinstance(step, SmoothQuant):
            return step.alpha
    note = recipe.notes.get(SMOOTHQUANT_NOTE, "")
    if not note.startswith("alpha="):
        return None
    return float(note.removeprefix("alpha=").split(":", 1)[0])


def build(model: nn.Module, recipe: Recipe, calib_batches: Iterable[Any]) -> nn.Module:
    """The frozen quantized model a `select` recipe describes: `quantize` / `calibrate` / `freeze` on it.

    The recipe's steps (SmoothQuant, when `select` chose it) run inside that pipeline. A recipe saved
    before steps existed, whose SmoothQuant choice lives only in `notes["smoothquant"]`, gets the
    step added here.

    Args:
        model: the float model `select` searched (not modified).
        recipe: a recipe `select` returned (any Recipe works).
        calib_batches: calibration inputs, as `select` took them.

    Returns:
        The calibrated, frozen model, ready to save, export or compile.

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> qp.selection.build(net, qp.Recipe(), [torch.randn(16, 8)])[0].is_frozen
        True
    """
    from .api import run_pipeline

    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a quantpilot.Recipe (what select returns), got {type(recipe).__name__}")
    batches = list(calib_batches)
    if not batches:
        raise ValueError("calib_batches is empty: pass the calibration inputs select used")
    alpha = smoothquant_alpha(recipe)
    if alpha is not None and not any(isinstance(step, SmoothQuant) for step in recipe.steps):
        recipe = recipe.replace(steps=(*recipe.steps, SmoothQuant(alpha=alpha)))
    return run_pipeline(model, recipe, batches)


def select(
    model: nn.Module,
    recipe: Recipe | str,
    calib_batches: Iterable[Any],
    eval_fn: Callable[[nn.Module], float],
    budget: float = 0.005,
    *,
    strategy: str = "selective",
    lower_is_better: bool = False,
    relative: bool = True,
    rank_by: str = "leave-one-out",
    top_k: int | None = None,
    candidates: Sequence[CalibratorConfig | dict | str] = CANDIDATE_CALIBRATORS,
    progress: bool | None = None,
    statistics: CalibrationStatistics | None = None,
    smoothing: Sequence[float] = SMOOTHING_ALPHAS,
) -> Recipe:
    """Find a recipe whose quantized model stays within `budget` of the float model's metric.

    hybrid: leave the most harmful layers in float (greedily, in sensitivity order) until the budget is met,
    then give back to int8 any float layer the budget does not need.

    selective: int8-preserving fixes first, float layers only for what they cannot fix, because a float
    layer costs an engine its int8 kernel and the fusions around it (on OpenVINO a float layer between
    int8 ones adds a dequantize and a quantize too). In order: quantize the functional ops the model has
    (residual adds, attention matmuls); give every layer and point the calibrator with the least output
    MSE (kept only if the metric agrees); then, for the most harmful units by sensitivity, try every
    candidate calibrator on the task metric and keep the best; only then hybrid's float layers.

    Args:
        model: the float model (not modified).
        recipe: the starting `Recipe` or preset name (what "naive" quantization would use).
        calib_batches: calibration batches (used for statistics once, and for the calibrator choice).
        eval_fn: `eval_fn(model) -> float` on held-out data, higher is better unless `lower_is_better`.
        budget: allowed loss of metric: a fraction of the FP32 metric when `relative` (0.005 = 0.5 %),
            else an absolute amount.
        strategy: "selective" (functional ops, per-layer calibrators, then float layers) or "hybrid"
            (float layers only).
        lower_is_better: the metric is a loss or error rate.
        relative: read `budget` as a fraction of |FP32 metric|.
        rank_by: the sensitivity sweep that orders the units to fix ("one-at-a-time" or "leave-one-out").
        top_k: consider only the `top_k` layers with the lowest output SQNR for calibrator repair and float.
        candidates: activation calibrators a selective recipe chooses from.
        progress: show progress bars (default: on an interactive terminal outside CI).
        statistics: `CalibrationStatistics` already gathered on these batches for the recipe select
            quantizes (for "selective": `with_functional_ops(model, recipe)[0]`, with `keep_inputs=True`);
            saves the calibration pass, and lets the caller build the result from the same statistics.
        smoothing: SmoothQuant alphas a selective search tries (on every Linear with quantized
            activations) when the calibrators alone miss the budget; () never smooths. The chosen alpha
            is in `notes["smoothquant"]` (`smoothquant_alpha(recipe)` reads it): build that recipe with
            `qp.algorithms.smoothquant(model, calib_batches, alpha, recipe=recipe)`.

    Returns:
        A `Recipe` (YAML/JSON-serialisable): the float layers in `skip`, per-layer calibrators in
        `overrides`, and in `notes` why each choice was made; `notes["select"]` says whether the budget
        was met and, when it was not, the best metric found and the gap (a warning says so too).

    Raises:
        ValueError: a negative budget, unknown strategy or rank_by, empty calibration data, statistics
            gathered for another recipe.

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 2))
        >>> r = select(net, "int8-static", [torch.randn(8, 4)], lambda m: 1.0, budget=0.01, strategy="hybrid")
        >>> r.skip, r.name
        ((), 'int8-static-hybrid')
    """
    recipe = stages.check_arguments(recipe, eval_fn, budget, strategy, rank_by, smoothing)
    search, notes = stages.prepare(model, recipe, calib_batches, eval_fn, budget, strategy == "selective", relative,
                                   lower_is_better, candidates, statistics)  # fmt: skip
    base, metric = stages.start(search, smoothing, notes)
    base, metric, floats, harm, repairs = stages.repair(search, base, metric, rank_by, top_k, progress)
    return stages.finish(
        search, recipe, base, metric, floats, harm, repairs, notes,
        strategy=strategy, budget=budget, relative=relative, rank_by=rank_by,
    )  # fmt: skip
