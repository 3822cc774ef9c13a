"""The activation-calibrator choices of `select` (`quantpilot.selection` re-exports the public ones).

Per layer and point, the candidate whose quantized output is closest to the float one
(`choose_calibrators`), and, unit by unit, the candidate with the best task metric (`_repair_calibrators`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .analysis.statistics import CalibrationStatistics, literal_pattern, point_quantizers
from .api import quantized_layers
from .nn.tensor_quantizer import CalibratorConfig, TensorQuantizer
from .recipe import Recipe
from .spec import PerTensor

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
