"""The stages of `select`: argument checks, the tuned start and SmoothQuant trials, the sensitivity-driven
calibrator repair and float layers, and the notes that say why (`quantpilot.selection.select` runs them)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .analysis.sensitivity import MODES, check_metric, harm_of, quantization_units, sensitivity, variant
from .analysis.statistics import CalibrationStatistics, literal_pattern
from .api import quantize
from .functional_points import functional_points
from .nn.tensor_quantizer import CalibratorConfig
from .recipe import FUNCTIONAL_OPS, Recipe
from .selection_calibrators import _repair_calibrators, _tunable_units, _with_calibrators, choose_calibrators
from .steps import SmoothQuant

STRATEGIES = ("hybrid", "selective")
SMOOTHQUANT_NOTE = "smoothquant"


def with_functional_ops(model: nn.Module, recipe: Recipe) -> tuple[Recipe, dict[str, str]]:
    """`recipe` plus every functional op ("add", "matmul") the model supports, and a note per op.

    Quantizing both inputs of a residual add lets an engine keep Conv+Add (or MatMul) in int8 instead of
    falling back to float around it; an op the model cannot take (a transformers model does not trace for
    "add", a CNN has no attention for "matmul") is left out, and the note says why.

    Example:
        >>> import torch, quantpilot as qp
        >>> recipe, notes = with_functional_ops(torch.nn.Sequential(torch.nn.Linear(2, 2)), qp.Recipe())
        >>> recipe.ops, notes["ops:add"]
        ((), 'not quantized: the model has no add to quantize')
    """
    ops, notes = list(recipe.ops), {}
    for op in FUNCTIONAL_OPS:
        if op in ops:
            continue
        try:
            points = functional_points(quantize(model, recipe.replace(ops=(*ops, op))))
        except ValueError as err:
            notes[f"ops:{op}"] = f"not quantized: {str(err).splitlines()[0][:160]}"
            continue
        if not any(p.rpartition(":")[2].startswith(op) for p in points):
            notes[f"ops:{op}"] = f"not quantized: the model has no {op} to quantize"
            continue
        ops.append(op)
        notes[f"ops:{op}"] = "quantized (engines keep the surrounding ops in int8 instead of converting back to float)"
    return recipe.replace(ops=tuple(ops)), notes


def _tuned_start(
    stats: CalibrationStatistics,
    quantized: Recipe,
    candidates: Sequence[CalibratorConfig | dict | str],
    selective: bool,
    measure: Callable[..., float],
    loss: Callable[[float], float],
) -> tuple[Recipe, float, dict[str, str]]:
    """The recipe to start from and its metric: for selective, the least-output-MSE calibrators if the task
    metric agrees they help (they rank ranges by each layer's own output, not by the metric)."""
    metric = measure(quantized)
    if not selective:
        return quantized, metric, {}
    tuned, notes = _with_calibrators(quantized, choose_calibrators(stats, quantized, candidates), stats)
    if not notes:
        return quantized, metric, {}
    tuned_metric = measure(tuned)
    if loss(tuned_metric) <= loss(metric):
        return tuned, tuned_metric, notes
    why = f"not used: they scored {tuned_metric:.6g}, the recipe's own calibrators {metric:.6g}"
    return quantized, metric, {"calibrators:output-mse": why}


def _smoothing_notes(notes: dict[str, str], alpha: float | None) -> dict[str, str]:
    """The start notes with the SmoothQuant trials folded into one "smoothquant" note (what to build with)."""
    trials = {k: v for k, v in notes.items() if k.startswith("smoothquant alpha ")}
    out = {k: v for k, v in notes.items() if k not in trials}
    if not trials:
        return out
    tried = "; ".join(f"{k.removeprefix('smoothquant ')}: {v}" for k, v in trials.items())
    if alpha is None:
        out[SMOOTHQUANT_NOTE] = f"not used: no alpha improved the metric ({tried})"
    else:
        out[SMOOTHQUANT_NOTE] = f"alpha={alpha:g}: the recipe's SmoothQuant step ({tried})"
    return out


def _check_statistics(statistics: Any, recipe: Recipe, keep_inputs: bool) -> CalibrationStatistics:
    """`statistics` if they were gathered for `recipe` (up to name and notes), else a clear error."""
    if not isinstance(statistics, CalibrationStatistics):
        kind = type(statistics).__name__
        raise TypeError(f"statistics must be quantpilot.analysis.CalibrationStatistics, got {kind}")
    if statistics.recipe.replace(name="", notes={}) != recipe.replace(name="", notes={}):
        raise ValueError(
            "statistics were gathered for another recipe than the one select quantizes "
            f"(ops {list(statistics.recipe.ops)} vs {list(recipe.ops)}); gather them with "
            "CalibrationStatistics(model, recipe, batches, keep_inputs=True), where for strategy='selective' "
            "recipe is selection.with_functional_ops(model, recipe)[0]"
        )
    if keep_inputs and not statistics.inputs:
        raise ValueError("strategy='selective' needs statistics gathered with keep_inputs=True (layer inputs)")
    return statistics


def check_arguments(
    recipe: Recipe | str, eval_fn: Any, budget: Any, strategy: str, rank_by: str, smoothing: Any
) -> Recipe:
    """Validate `select`'s arguments; return the recipe (a preset name resolved)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: use one of {list(STRATEGIES)}")
    if rank_by not in MODES:
        raise ValueError(f"rank_by={rank_by!r}: use one of {list(MODES)}")
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget) or budget < 0:
        raise ValueError(f"budget must be a finite number >= 0 (e.g. 0.005 for 0.5 %), got {budget!r}")
    if not callable(eval_fn):
        raise TypeError("eval_fn must be a function model -> float")
    if isinstance(smoothing, str) or any(
        isinstance(a, bool) or not isinstance(a, int | float) or not 0 <= a <= 1 for a in smoothing
    ):
        raise ValueError(f"smoothing must be a list of SmoothQuant alphas in [0, 1] (or ()), got {smoothing!r}")
    recipe = Recipe.preset(recipe) if isinstance(recipe, str) else recipe
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a quantpilot.Recipe or a preset name, got {type(recipe).__name__}")
    return recipe


@dataclass
class Search:
    """What every stage of one `select` call shares: the data, the metric, the budget, the statistics.

    `stats` is rebound while SmoothQuant alphas are tried; `measure` builds from the current one.
    """

    model: nn.Module
    quantized: Recipe
    batches: list[Any]
    eval_fn: Callable[[nn.Module], float]
    stats: CalibrationStatistics
    float_metric: float
    allowed: float
    lower_is_better: bool
    selective: bool
    candidates: Sequence[CalibratorConfig | dict | str]

    def loss(self, metric: float) -> float:
        return harm_of(metric, self.float_metric, self.lower_is_better)

    def within(self, metric: float) -> bool:
        return self.loss(metric) <= self.allowed + 1e-12

    def measure(self, candidate: Recipe, floats: Sequence[str] = ()) -> float:
        return check_metric(self.eval_fn(self.stats.build(variant(candidate, floats))), "eval_fn(quantized model)")


def prepare(
    model: nn.Module,
    recipe: Recipe,
    calib_batches: Iterable[Any],
    eval_fn: Callable[[nn.Module], float],
    budget: float,
    selective: bool,
    relative: bool,
    lower_is_better: bool,
    candidates: Sequence[CalibratorConfig | dict | str],
    statistics: CalibrationStatistics | None,
) -> tuple[Search, dict[str, str]]:
    """The recipe select quantizes (selective: plus the functional ops), its statistics, the float metric and
    the allowed loss; returns the search state and the notes so far."""
    batches = list(calib_batches)
    notes: dict[str, str] = {}
    quantized = recipe
    if selective:
        quantized, notes = with_functional_ops(model, recipe)
    if statistics is None:
        stats = CalibrationStatistics(model, quantized, batches, keep_inputs=selective)
    else:
        stats = _check_statistics(statistics, quantized, keep_inputs=selective)
    float_metric = check_metric(eval_fn(model), "eval_fn(float model)")
    allowed = budget * abs(float_metric) if relative else float(budget)
    search = Search(
        model, quantized, batches, eval_fn, stats, float_metric, allowed, lower_is_better, selective, candidates
    )
    return search, notes


def start(search: Search, smoothing: Iterable[float], notes: dict[str, str]) -> tuple[Recipe, float]:
    """The tuned start; for selective, SmoothQuant alphas tried when it misses the budget (may rebind `stats`).

    Adds the start's notes (the calibrator choice, the SmoothQuant trials) to `notes`."""
    s = search
    base, metric, start_notes = _tuned_start(s.stats, s.quantized, s.candidates, s.selective, s.measure, s.loss)
    if s.selective and not s.within(metric):
        # SmoothQuant keeps every layer int8: try it before anything that costs float layers. Its statistics
        # are new (the smoothed inputs have other ranges), gathered once per alpha.
        best, trials, unsmoothed = s.stats, {}, metric
        for alpha in smoothing:
            try:
                s.stats = CalibrationStatistics(s.model, s.quantized, s.batches, keep_inputs=True, smoothing=alpha)
            except ValueError:
                break  # no Linear with quantized activations: nothing to smooth
            trial = _tuned_start(s.stats, s.quantized, s.candidates, s.selective, s.measure, s.loss)
            trials[f"smoothquant alpha {alpha:g}"] = f"{trial[1]:.6g} (without smoothing {unsmoothed:.6g})"
            if s.loss(trial[1]) < s.loss(metric):
                best, (base, metric, start_notes) = s.stats, trial
        s.stats = best
        start_notes = {**start_notes, **trials}
    notes.update(_smoothing_notes(start_notes, s.stats.alpha))
    return base, metric


def repair(
    search: Search, base: Recipe, metric: float, rank_by: str, top_k: int | None, progress: bool | None
) -> tuple[Recipe, float, list[str], dict[str, float], dict[str, Any]]:
    """Sensitivity-driven fixes while the budget is missed: calibrator repair (selective), then float layers,
    then give back the float layers the budget does not need; else the best recipe tried.

    Returns:
        `(base, metric, floats, harm, repairs)`.
    """
    s = search
    floats: list[str] = []
    harm: dict[str, float] = {}
    tried = [(metric, [], base)]
    repairs: dict[str, Any] = {}
    if not s.within(metric):
        report = sensitivity(
            s.model, base, s.batches, s.eval_fn, mode=rank_by, lower_is_better=s.lower_is_better,
            top_k=top_k, progress=progress, statistics=s.stats, reference_metrics=(s.float_metric, metric),
        )  # fmt: skip
        harm = {row.name: row.harm for row in report.rows}
        if s.selective:
            # Int8-preserving repair first: a unit whose range is poorly chosen may only need another calibrator.
            base, metric, repairs = _repair_calibrators(
                base, metric, report.names(), harm, _tunable_units(s.stats, base), s.candidates, s.measure, s.loss,
                s.allowed,
            )  # fmt: skip
            tried += [(m, [], r) for m, r in repairs.pop("tried")]
        for name in report.names():
            if s.within(metric) or len(floats) + 1 >= len(quantization_units(s.stats.quantized)):
                break  # leaving every layer in float is the float model, not a quantization recipe
            floats.append(name)
            metric = s.measure(base, floats)
            tried.append((metric, list(floats), base))
        if s.within(metric):
            # Greedy additions can overshoot: give back to int8 any float layer the budget does not need.
            for name in list(floats)[:-1][::-1]:
                trial = [n for n in floats if n != name]
                trial_metric = s.measure(base, trial)
                if s.within(trial_metric):
                    floats, metric = trial, trial_metric
    if not s.within(metric):
        metric, floats, base = min(tried, key=lambda t: (s.loss(t[0]), len(t[1])))
    return base, metric, floats, harm, repairs


def finish(
    search: Search,
    recipe: Recipe,
    base: Recipe,
    metric: float,
    floats: list[str],
    harm: dict[str, float],
    repairs: dict[str, Any],
    notes: dict[str, str],
    *,
    strategy: str,
    budget: float,
    relative: bool,
    rank_by: str,
) -> Recipe:
    """The returned recipe: float layers in `skip`, the chosen calibrators and SmoothQuant step, and the notes
    (why each layer is float, which calibrators the task metric chose, the summary; a warning on a miss)."""
    s = search
    units = quantization_units(s.stats.quantized)
    ranks = {name: rank for rank, name in enumerate(sorted(harm, key=harm.get, reverse=True), 1)}
    for name in floats:
        notes.pop(name, None)
        notes[name] = f"left in float: sensitivity rank {ranks[name]} ({rank_by} harm {harm[name]:.4g})"
    repaired = 0
    for name, (config, note) in repairs.items():
        if name not in floats and base.overrides.get(literal_pattern(name), {}).get("activation_calibrator") == config:
            notes[name], repaired = note, repaired + 1  # only repairs the returned recipe really contains
    gap = s.loss(metric) - s.allowed
    summary = (
        f"FP32 metric {s.float_metric:.6g}, this recipe {metric:.6g} with {len(floats)} of {len(units)} layers in float"
        + (f" and {repaired} calibrators chosen by the task metric" if s.selective else "")
        + (f", SmoothQuant alpha {s.stats.alpha:g}" if s.stats.alpha is not None else "")
        + f" (strategy {strategy}, budget {budget:g}{' relative' if relative else ''}, allowed loss {s.allowed:.4g})"
    )
    if s.within(metric):
        notes["select"] = "met the budget: " + summary
    else:
        notes["select"] = f"MISSED the budget by {gap:.4g} (best found): " + summary
        warnings.warn(f"select: {notes['select']}", stacklevel=3)  # at select's caller
    # A float layer needs no calibrator: drop the override select added for it (its note says why it is float).
    overrides = {
        p: o for p, o in base.overrides.items() if p in recipe.overrides or p not in map(literal_pattern, floats)
    }
    result = variant(base.replace(overrides=overrides), floats)
    if s.stats.alpha is not None:
        result = result.replace(steps=(*result.steps, SmoothQuant(alpha=s.stats.alpha)))
    return result.replace(name=f"{recipe.name}-{strategy}", notes={**recipe.notes, **notes})
