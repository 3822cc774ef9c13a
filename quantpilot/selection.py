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

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .analysis.sensitivity import MODES, check_metric, harm_of, quantization_units, sensitivity, variant
from .analysis.statistics import CalibrationStatistics, literal_pattern, point_quantizers
from .api import quantize, quantized_layers
from .functional_points import functional_points
from .nn.tensor_quantizer import CalibratorConfig, TensorQuantizer
from .recipe import FUNCTIONAL_OPS, Recipe
from .spec import PerTensor
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

STRATEGIES = ("hybrid", "selective")
# The SmoothQuant migration strengths selective tries (0.5: the paper's default; 0.8: all-MiniLM-L6-v2's
# outlier channels, measured in benchmarks/bench_engines.py), and the note that records the choice.
SMOOTHING_ALPHAS = (0.5, 0.8)
SMOOTHQUANT_NOTE = "smoothquant"

# The activation calibrators a selective recipe picks from (all derivable from one histogram pass).
CANDIDATE_CALIBRATORS = (
    CalibratorConfig("minmax"),
    CalibratorConfig("histogram", {"method": "percentile", "percentile": 99.99}),
    CalibratorConfig("histogram", {"method": "entropy"}),
    CalibratorConfig("histogram", {"method": "mse"}),
)


def calibrator_label(config: CalibratorConfig) -> str:
    """A short readable name of a calibrator configuration (the keys of `choose_calibrators`' error tables).

    Example:
        >>> calibrator_label(CalibratorConfig("histogram", {"method": "mse"}))
        'histogram(method=mse)'
    """
    options = ",".join(f"{k}={v}" for k, v in config.options.items())
    return config.kind + (f"({options})" if options else "")


@torch.no_grad()
def choose_calibrators(
    stats: CalibrationStatistics,
    recipe: Recipe,
    candidates: Sequence[CalibratorConfig | dict | str] = CANDIDATE_CALIBRATORS,
) -> dict[str, tuple[CalibratorConfig, dict[str, float]]]:
    """For each quantized layer with a static per-tensor input, the calibrator with the least output MSE.

    The layer (quantized weight, input quantized with each candidate's range) runs on the calibration
    inputs `stats` kept; its output is compared with the float layer's on the same inputs.

    Args:
        stats: statistics gathered with `keep_inputs=True`.
        recipe: the recipe whose layers are tuned (same activation specs as `stats.recipe`).
        candidates: calibrator configurations to try; those the statistics cannot serve are passed over.

    Returns:
        `{layer name: (best calibrator, {candidate label: output MSE})}`.

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> stats = CalibrationStatistics(net, qp.Recipe(), [torch.randn(16, 4)], keep_inputs=True)
        >>> best, errors = choose_calibrators(stats, qp.Recipe())["0"]
        >>> len(errors), errors[calibrator_label(best)] == min(errors.values())
        (4, True)
    """
    if not stats.inputs:
        raise ValueError("these statistics kept no layer inputs: gather them with keep_inputs=True")
    configs = [CalibratorConfig.from_dict(c) for c in candidates]
    if not configs:
        raise ValueError("candidates is empty: give at least one calibrator configuration")
    qmodel = stats.build(recipe)
    choices = {}
    for name, layer in quantized_layers(qmodel):
        q = layer.input_quantizer
        inputs = stats.inputs.get(name) or []
        if not q.needs_calibration or not isinstance(q.spec.granularity, PerTensor) or not inputs:
            continue
        reference = stats.model.get_submodule(name)
        expected = [reference(x) for x in inputs]

        def layer_error(layer=layer, inputs=inputs, expected=expected) -> float:
            pairs = zip(inputs, expected, strict=True)
            return sum(float((layer(x) - y).double().pow(2).mean()) for x, y in pairs) / len(inputs)

        best = _best_calibrator(stats, [q], configs, layer_error)
        if best is not None:
            choices[name] = best
    for point, quantizers in point_quantizers(qmodel).items():
        static = [q for q in quantizers if q.needs_calibration and isinstance(q.spec.granularity, PerTensor)]
        if not static or not all(stats.inputs.get(q.qualname) for q in static):
            continue

        # A point has no weight: its output error is the sum of its inputs' quantization errors (an add
        # adds them; a matmul scales them by the other operand), so the inputs' MSE ranks the candidates.
        def point_error(static=static) -> float:
            total = 0.0
            for q in static:
                kept = stats.inputs[q.qualname]
                total += sum(float((q(x) - x).double().pow(2).mean()) for x in kept) / len(kept)
            return total

        best = _best_calibrator(stats, static, configs, point_error)
        if best is not None:
            choices[point] = best
    return choices


def _best_calibrator(
    stats: CalibrationStatistics,
    quantizers: list[TensorQuantizer],
    configs: list[CalibratorConfig],
    error: Callable[[], float],
) -> tuple[CalibratorConfig, dict[str, float]] | None:
    """Set each candidate's qparams on `quantizers` (all share one calibrator), score with `error()`, restore."""
    kept = [(q.scale, q.zero_point) for q in quantizers]
    current = quantizers[0].calibrator_config
    errors: dict[str, float] = {}
    best: tuple[float, CalibratorConfig] | None = None
    try:
        # The current calibrator first, so that a tie keeps it.
        for config in sorted(configs, key=lambda c: c != current):
            try:
                qparams = [stats.calibrator_for(q.qualname, config, q.spec).qparams() for q in quantizers]
            except ValueError:
                continue  # e.g. entropy on fp8: not a candidate for this spec
            for q, (scale, zero_point) in zip(quantizers, qparams, strict=True):
                q.scale, q.zero_point = scale, zero_point
            errors[calibrator_label(config)] = error()
            if best is None or errors[calibrator_label(config)] < best[0]:
                best = (errors[calibrator_label(config)], config)
    finally:
        for q, (scale, zero_point) in zip(quantizers, kept, strict=True):
            q.scale, q.zero_point = scale, zero_point
    return None if best is None else (best[1], errors)


def _with_calibrators(
    recipe: Recipe, choices: dict[str, tuple[CalibratorConfig, dict[str, float]]], stats: CalibrationStatistics
) -> tuple[Recipe, dict[str, str]]:
    """`recipe` with an override for every layer whose best calibrator differs from its current one, and notes."""
    overrides = dict(recipe.overrides)
    notes = {}
    current = {name: layer.input_quantizer.calibrator_config for name, layer in quantized_layers(stats.quantized)}
    current.update({point: qs[0].calibrator_config for point, qs in point_quantizers(stats.quantized).items()})
    for name, (config, errors) in choices.items():
        if config == current.get(name):
            continue
        overrides[literal_pattern(name)] = {**overrides.get(literal_pattern(name), {}), "activation_calibrator": config}
        ranked = ", ".join(f"{label} {mse:.3g}" for label, mse in sorted(errors.items(), key=lambda kv: kv[1]))
        notes[name] = (
            f"activation calibrator {calibrator_label(config)}: least output MSE on calibration data ({ranked})"
        )
    return recipe.replace(overrides=overrides), notes


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


def _tunable_units(stats: CalibrationStatistics, recipe: Recipe) -> dict[str, CalibratorConfig]:
    """The units (layers and points) whose activation range is static per tensor, with their current calibrator.

    Only these can take another calibrator from the stored histograms; `recipe`'s overrides for a unit win
    over the calibrator the statistics were gathered with.
    """
    current: dict[str, CalibratorConfig] = {}
    for name, layer in quantized_layers(stats.quantized):
        q = layer.input_quantizer
        if q is not None and q.needs_calibration and isinstance(q.spec.granularity, PerTensor):
            current[name] = q.calibrator_config
    for point, quantizers in point_quantizers(stats.quantized).items():
        if all(q.needs_calibration and isinstance(q.spec.granularity, PerTensor) for q in quantizers):
            current[point] = quantizers[0].calibrator_config
    for name in current:
        chosen = recipe.overrides.get(literal_pattern(name), {}).get("activation_calibrator")
        if chosen is not None:
            current[name] = chosen
    return current


def _with_calibrator(recipe: Recipe, name: str, config: CalibratorConfig) -> Recipe:
    """`recipe` with the unit `name` (exact name) given activation calibrator `config`."""
    pattern = literal_pattern(name)
    overrides = {**recipe.overrides, pattern: {**recipe.overrides.get(pattern, {}), "activation_calibrator": config}}
    return recipe.replace(overrides=overrides)


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
    from .algorithms.rtn import run_pipeline

    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a quantpilot.Recipe (what select returns), got {type(recipe).__name__}")
    batches = list(calib_batches)
    if not batches:
        raise ValueError("calib_batches is empty: pass the calibration inputs select used")
    alpha = smoothquant_alpha(recipe)
    if alpha is not None and not any(isinstance(step, SmoothQuant) for step in recipe.steps):
        recipe = recipe.replace(steps=(*recipe.steps, SmoothQuant(alpha=alpha)))
    return run_pipeline(model, recipe, batches)


def _repair_calibrators(
    base: Recipe,
    metric: float,
    ranked: list[str],
    harm: dict[str, float],
    tunable: dict[str, CalibratorConfig],
    candidates: Sequence[CalibratorConfig | dict | str],
    measure: Callable[[Recipe], float],
    loss: Callable[[float], float],
    allowed: float,
) -> tuple[Recipe, float, dict[str, Any]]:
    """Walk the units most harmful first; give each the candidate calibrator with the best task metric.

    Stops as soon as the loss is within `allowed`. A unit whose sensitivity harm is not positive is passed
    over: leaving it in float does not help, so neither will another range. Costs one evaluation per unit
    and candidate.

    Returns:
        The repaired recipe, its metric, and `{unit: (calibrator, note)}` plus `"tried": [(metric, recipe)]`.
    """
    configs = [CalibratorConfig.from_dict(c) for c in candidates]
    repairs: dict[str, Any] = {"tried": []}
    for rank, name in enumerate(ranked, 1):
        if loss(metric) <= allowed + 1e-12:
            break
        if harm[name] <= 0 or name not in tunable:
            continue
        scores = {calibrator_label(tunable[name]): metric}
        best: tuple[Recipe, float, CalibratorConfig] | None = None
        for config in configs:
            if config == tunable[name]:
                continue
            trial = _with_calibrator(base, name, config)
            try:
                trial_metric = measure(trial)
            except ValueError:
                continue  # the stored statistics cannot give this calibrator for this spec
            scores[calibrator_label(config)] = trial_metric
            if loss(trial_metric) < loss(metric if best is None else best[1]):
                best = (trial, trial_metric, config)
        if best is None:
            continue
        base, metric = best[0], best[1]
        repairs["tried"].append((metric, base))
        listed = ", ".join(
            f"{label} {value:.6g}" for label, value in sorted(scores.items(), key=lambda kv: loss(kv[1]))
        )
        repairs[name] = (
            best[2],
            f"activation calibrator {calibrator_label(best[2])}: best task metric of the candidates ({listed}; "
            f"sensitivity rank {rank})",
        )
    return base, metric, repairs


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
    selective = strategy == "selective"
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

    def loss(metric: float) -> float:
        return harm_of(metric, float_metric, lower_is_better)

    def within(metric: float) -> bool:
        return loss(metric) <= allowed + 1e-12

    def measure(candidate: Recipe, floats: Sequence[str] = ()) -> float:
        return check_metric(eval_fn(stats.build(variant(candidate, floats))), "eval_fn(quantized model)")

    base, metric, start_notes = _tuned_start(stats, quantized, candidates, selective, measure, loss)
    if selective and not within(metric):
        # SmoothQuant keeps every layer int8: try it before anything that costs float layers. Its statistics
        # are new (the smoothed inputs have other ranges), gathered once per alpha.
        best, trials, unsmoothed = stats, {}, metric
        for alpha in smoothing:
            try:
                stats = CalibrationStatistics(model, quantized, batches, keep_inputs=True, smoothing=alpha)
            except ValueError:
                break  # no Linear with quantized activations: nothing to smooth
            trial = _tuned_start(stats, quantized, candidates, selective, measure, loss)
            trials[f"smoothquant alpha {alpha:g}"] = f"{trial[1]:.6g} (without smoothing {unsmoothed:.6g})"
            if loss(trial[1]) < loss(metric):
                best, (base, metric, start_notes) = stats, trial
        stats = best
        start_notes = {**start_notes, **trials}
    notes.update(_smoothing_notes(start_notes, stats.alpha))
    floats: list[str] = []
    harm: dict[str, float] = {}
    tried = [(metric, [], base)]
    repairs: dict[str, Any] = {}
    if not within(metric):
        report = sensitivity(
            model, base, batches, eval_fn, mode=rank_by, lower_is_better=lower_is_better,
            top_k=top_k, progress=progress, statistics=stats, reference_metrics=(float_metric, metric),
        )  # fmt: skip
        harm = {row.name: row.harm for row in report.rows}
        if selective:
            # Int8-preserving repair first: a unit whose range is poorly chosen may only need another calibrator.
            base, metric, repairs = _repair_calibrators(
                base, metric, report.names(), harm, _tunable_units(stats, base), candidates, measure, loss, allowed
            )
            tried += [(m, [], r) for m, r in repairs.pop("tried")]
        for name in report.names():
            if within(metric) or len(floats) + 1 >= len(quantization_units(stats.quantized)):
                break  # leaving every layer in float is the float model, not a quantization recipe
            floats.append(name)
            metric = measure(base, floats)
            tried.append((metric, list(floats), base))
        if within(metric):
            # Greedy additions can overshoot: give back to int8 any float layer the budget does not need.
            for name in list(floats)[:-1][::-1]:
                trial = [n for n in floats if n != name]
                trial_metric = measure(base, trial)
                if within(trial_metric):
                    floats, metric = trial, trial_metric
    if not within(metric):
        metric, floats, base = min(tried, key=lambda t: (loss(t[0]), len(t[1])))
    units = quantization_units(stats.quantized)
    ranks = {name: rank for rank, name in enumerate(sorted(harm, key=harm.get, reverse=True), 1)}
    for name in floats:
        notes.pop(name, None)
        notes[name] = f"left in float: sensitivity rank {ranks[name]} ({rank_by} harm {harm[name]:.4g})"
    repaired = 0
    for name, (config, note) in repairs.items():
        if name not in floats and base.overrides.get(literal_pattern(name), {}).get("activation_calibrator") == config:
            notes[name], repaired = note, repaired + 1  # only repairs the returned recipe really contains
    gap = loss(metric) - allowed
    summary = (
        f"FP32 metric {float_metric:.6g}, this recipe {metric:.6g} with {len(floats)} of {len(units)} layers in float"
        + (f" and {repaired} calibrators chosen by the task metric" if selective else "")
        + (f", SmoothQuant alpha {stats.alpha:g}" if stats.alpha is not None else "")
        + f" (strategy {strategy}, budget {budget:g}{' relative' if relative else ''}, allowed loss {allowed:.4g})"
    )
    if within(metric):
        notes["select"] = "met the budget: " + summary
    else:
        notes["select"] = f"MISSED the budget by {gap:.4g} (best found): " + summary
        warnings.warn(f"select: {notes['select']}", stacklevel=2)
    # A float layer needs no calibrator: drop the override select added for it (its note says why it is float).
    overrides = {
        p: o for p, o in base.overrides.items() if p in recipe.overrides or p not in map(literal_pattern, floats)
    }
    result = variant(base.replace(overrides=overrides), floats)
    if stats.alpha is not None:
        result = result.replace(steps=(*result.steps, SmoothQuant(alpha=stats.alpha)))
    return result.replace(name=f"{recipe.name}-{strategy}", notes={**recipe.notes, **notes})
