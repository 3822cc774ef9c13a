"""Calibrate once, then build any variant of a recipe from the stored statistics.

Sensitivity analysis and selection try many variants of one recipe (a layer left in float, another
calibrator for a layer). Calibration observes the *float* model, so every layer's input statistics are
the same in all variants: one pass over the calibration data serves them all. `CalibrationStatistics`
keeps, for every static quantization point, the recipe's own calibrator and (for per-tensor ranges) a
histogram from which the other calibrators' ranges follow (min-max from its exact extremes; entropy,
MSE and percentile from its bins). `build(recipe)` quantizes a fresh copy, hands each point a copy of
its statistics and freezes it: the same model `quantize` -> `calibrate` -> `freeze` gives.

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> stats = CalibrationStatistics(net, qp.Recipe(), [torch.randn(8, 4) for _ in range(2)])
    >>> qp.is_frozen(stats.build(qp.Recipe(skip=("2",))))
    True
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..api import calibrate, freeze, quantize, quantized_layers
from ..batches import call_model
from ..calibrators import Calibrator, Histogram, MinMax
from ..nn import QuantLinear, TensorQuantizer
from ..nn.attention import AttentionQuantizers
from ..nn.residual_add import QuantAdd
from ..nn.tensor_quantizer import CalibratorConfig
from ..recipe import Recipe
from ..spec import PerTensor, QuantSpec
from ..surgery import observe

__all__ = ["CalibrationStatistics", "literal_pattern", "point_quantizers", "quantizers_by_point", "apply_smoothing"]

# Bound on the calibration inputs kept per layer for output-error measurements (float32 values):
# 2**20 values = 4 MiB, a few batches of a BERT layer or the whole calibration set of a small CNN.
DEFAULT_INPUT_BUDGET = 2**20


def literal_pattern(name: str) -> str:
    """An fnmatch pattern that matches exactly `name` (recipe skip/override patterns are fnmatch).

    Example:
        >>> from fnmatch import fnmatch
        >>> p = literal_pattern("blocks[0]*"); fnmatch("blocks[0]*", p), fnmatch("blocks0x", p)
        (True, False)
    """
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def point_quantizers(qmodel: nn.Module) -> dict[str, list[TensorQuantizer]]:
    """The quantizers of each functional point, by point name ("blocks.0:add", "encoder.layer.0.attention.self:matmul").

    Example:
        >>> import torch
        >>> point_quantizers(torch.nn.Linear(2, 2))
        {}
    """
    out = {}
    for name, module in qmodel.named_modules():
        if isinstance(module, QuantAdd):
            out[module.point] = [module.lhs_quantizer, module.rhs_quantizer]
        elif isinstance(module, AttentionQuantizers):
            out[name.rpartition(".")[0] + ":matmul"] = [q for q in module.children() if isinstance(q, TensorQuantizer)]
    return out


def quantizers_by_point(model: nn.Module) -> dict[str, TensorQuantizer]:
    """The quantizers of `model` that calibrate a range, by their point's qualified name.

    Example:
        >>> import torch, quantpilot as qp
        >>> q = qp.quantize(torch.nn.Sequential(torch.nn.Linear(2, 2)), "int8-static")
        >>> sorted(quantizers_by_point(q))
        ['0.input_quantizer']
    """
    return {q.qualname: q for q in model.modules() if isinstance(q, TensorQuantizer) and q.needs_calibration}


class CalibrationStatistics:
    """One calibration pass over `batches`, reusable for every variant of `recipe`.

    Args:
        model: the float model (not modified).
        recipe: the recipe whose quantization points are calibrated (variants may skip points or
            change their calibrator, not their activation spec).
        batches: calibration batches, each passed as `quantpilot.batches.call_model` does.
        keep_inputs: also keep each quantized layer's float input (up to `input_budget` values per
            layer), for output-error measurements such as `select`'s calibrator choice.
        input_budget: values kept per layer when `keep_inputs`.
        smoothing: a SmoothQuant alpha in [0, 1]: every quantized Linear with quantized activations (and a
            weight of its own, not tied) gets `QuantLinear.smooth` with the factors
            `algorithms.smoothquant.smoothing_factors` computes from the float inputs' per-channel max |x|
            (one extra pass over `batches`), before calibration, in the statistics' model and in every
            model `build` returns: what `qp.algorithms.smoothquant(model, batches, alpha, recipe)` gives.

    Attributes:
        model: the float model.
        recipe: the calibrated recipe.
        quantized: the quantized, calibrated, *unfrozen* model the statistics came from.
        inputs: `{layer name: [float input tensors]}` when `keep_inputs`; functional points (residual
            adds, attention matmuls) are kept per quantizer, under the quantizer's qualified name.
        smoothing: `{layer name: smoothing factors}` (empty without `smoothing`).
        alpha: the SmoothQuant alpha, or None.

    Example:
        >>> import torch, quantpilot as qp
        >>> stats = CalibrationStatistics(torch.nn.Linear(3, 3), qp.Recipe(), [torch.randn(4, 3)])
        >>> sorted(stats.points)
        ['input_quantizer']
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        batches: Iterable[Any],
        *,
        keep_inputs: bool = False,
        input_budget: int = DEFAULT_INPUT_BUDGET,
        smoothing: float | None = None,
    ) -> None:
        if smoothing is not None and (
            isinstance(smoothing, bool) or not isinstance(smoothing, int | float) or not 0.0 <= smoothing <= 1.0
        ):
            raise ValueError(f"smoothing must be a SmoothQuant alpha in [0, 1] or None, got {smoothing!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(recipe, Recipe):
            raise TypeError(f"recipe must be a quantpilot.Recipe, got {type(recipe).__name__}")
        self.model = model
        self.recipe = recipe
        batches = list(batches)
        self.quantized = quantize(model, recipe)
        self.alpha = None if smoothing is None else float(smoothing)
        self.smoothing: dict[str, torch.Tensor] = {}
        if self.alpha is not None:
            self.smoothing = _smoothing_factors(model, self.quantized, batches, self.alpha)
            apply_smoothing(self.quantized, self.smoothing)
        quantizers = quantizers_by_point(self.quantized)
        self._histograms: dict[str, Histogram] = {}
        self.inputs: dict[str, list[torch.Tensor]] = {}
        feeders: dict[str, nn.Module] = {}
        for name, q in quantizers.items():
            if isinstance(q.spec.granularity, PerTensor) and not _is_histogram(q.calibrator_config):
                # The recipe's own calibrator is not a histogram: keep one beside it for the other candidates.
                self._histograms[name] = Histogram(q.spec, method="mse")
                feeders[name] = q
        keepers: dict[str, nn.Module] = {}
        if keep_inputs:
            layer_quantizers = set()
            for name, layer in quantized_layers(self.quantized):
                keepers[name] = layer
                layer_quantizers.add(layer.input_quantizer.qualname)
            keepers.update((name, q) for name, q in quantizers.items() if name not in layer_quantizers)
            self.inputs = {name: [] for name in keepers}
        seen = 0
        with (
            observe(self.quantized, feeders, before=self._feeder(quantizers)),
            observe(self.quantized, keepers, before=self._keeper(input_budget)),
            calibrate(self.quantized, progress=False),
        ):
            for batch in batches:
                call_model(self.quantized, batch)
                seen += 1
        if seen == 0:
            raise ValueError("calib_batches is empty: pass at least one calibration batch")
        self.points: dict[str, tuple[QuantSpec, CalibratorConfig, Calibrator]] = {}
        for name, q in quantizers.items():
            if q.calibrator is None or not q.calibrator.has_data:
                raise ValueError(
                    f"'{name}' saw no calibration data: the calibration batches never reach it; "
                    "pass batches that exercise the whole model, or skip that layer in the recipe"
                )
            self.points[name] = (q.spec, q.calibrator_config, q.calibrator)
            if _is_histogram(q.calibrator_config):
                self._histograms[name] = q.calibrator

    def _feeder(self, quantizers: dict[str, TensorQuantizer]):
        def feed(name, args, _kwargs):
            if quantizers[name].collecting:
                self._histograms[name].collect(args[0])

        return feed

    def _keeper(self, budget: int):
        def keep(name, args, _kwargs):
            kept = sum(t.numel() for t in self.inputs[name])
            x = args[0]
            if kept >= budget or not isinstance(x, torch.Tensor) or not x.is_floating_point():
                return
            rows = max(1, (budget - kept) // max(1, x[0].numel())) if x.dim() > 1 else x.shape[0]
            self.inputs[name].append(x[:rows].detach().clone())

        return keep

    def calibrator_for(self, point: str, config: CalibratorConfig | dict | str, spec: QuantSpec) -> Calibrator:
        """A calibrator of kind `config` holding the statistics of quantization point `point`.

        Args:
            point: a quantizer's qualified name, e.g. "fc.input_quantizer".
            config: the calibrator wanted ("minmax", or a histogram with any method).
            spec: the activation spec the variant uses; it must be the calibrated one.

        Raises:
            ValueError: unknown point, another spec, or a calibrator these statistics cannot serve.

        Example:
            >>> import torch, quantpilot as qp
            >>> stats = CalibrationStatistics(torch.nn.Linear(2, 2), qp.Recipe(), [torch.tensor([[-1.0, 3.0]])])
            >>> cal = stats.calibrator_for("input_quantizer", "minmax", qp.Recipe().activations)
            >>> [round(t.item(), 3) for t in cal.compute_range()]
            [-1.0, 3.0]
        """
        config = CalibratorConfig.from_dict(config)
        if point not in self.points:
            raise ValueError(
                f"no calibration statistics for '{point}': the variant quantizes a point the calibrated recipe "
                f"does not (calibrated points: {sorted(self.points)[:5]}...)"
            )
        recorded_spec, recorded_config, recorded = self.points[point]
        if spec != recorded_spec:
            raise ValueError(
                f"'{point}' was calibrated for {recorded_spec}, the variant asks for {spec}: statistics only carry "
                "over to a different calibrator, not a different activation spec; calibrate that recipe itself"
            )
        if config == recorded_config:
            return copy.deepcopy(recorded)
        histogram = self._histograms.get(point)
        if histogram is not None and config.kind == "minmax":
            # Per tensor, min-max needs only the extremes, which the histogram keeps exactly.
            state = histogram.state_dict()
            calibrator = MinMax(spec)
            calibrator.collect(torch.stack([state["min_val"], state["max_val"]]))
            return calibrator
        if histogram is not None and _is_histogram(config):
            calibrator = config.build(spec)
            if calibrator.bins == histogram.bins:
                return calibrator.load_state_dict(histogram.state_dict())
        raise ValueError(
            f"'{point}': the stored statistics cannot give a {config.to_dict()} range (they hold a "
            f"{recorded_config.to_dict()} calibrator{' and a histogram' if histogram is not None else ''}); "
            "use 'minmax' or a histogram calibrator with the default bins, or calibrate that recipe itself"
        )

    def build(self, recipe: Recipe | None = None) -> nn.Module:
        """Quantize a fresh copy of the float model with `recipe` and freeze it from the stored statistics.

        Args:
            recipe: a variant of the calibrated recipe (other skips or calibrators); default the calibrated one.

        Returns:
            A frozen quantized model, equal to what quantize -> calibrate (same batches) -> freeze gives.

        Example:
            >>> import torch, quantpilot as qp
            >>> stats = CalibrationStatistics(torch.nn.Linear(2, 2), qp.Recipe(), [torch.randn(3, 2)])
            >>> qp.is_frozen(stats.build())
            True
        """
        recipe = self.recipe if recipe is None else recipe
        if not isinstance(recipe, Recipe):
            raise TypeError(f"recipe must be a quantpilot.Recipe, got {type(recipe).__name__}")
        qmodel = quantize(self.model, recipe)
        apply_smoothing(qmodel, self.smoothing)
        for name, q in quantizers_by_point(qmodel).items():
            q.calibrator = self.calibrator_for(name, q.calibrator_config, q.spec)
        return freeze(qmodel)


def _smoothing_factors(
    model: nn.Module, qmodel: nn.Module, batches: list[Any], alpha: float
) -> dict[str, torch.Tensor]:
    """SmoothQuant factors of every quantized Linear of `qmodel` with quantized activations and an own weight,
    from the float model's inputs: the layers and statistics `algorithms.smoothquant` uses."""
    from ..algorithms.smoothquant import _input_statistics, _shared_parameters, shared_input_factors

    tied = _shared_parameters(qmodel)
    targets = {
        name: layer
        for name, layer in quantized_layers(qmodel)
        if isinstance(layer, QuantLinear) and _quantizes_input(layer) and id(layer.weight) not in tied
    }
    if not targets:
        raise ValueError("smoothing needs a quantized Linear layer with quantized activations; this recipe has none")
    amax, _, sources = _input_statistics(model, set(targets), batches)
    return shared_input_factors(amax, sources, {n: layer.weight for n, layer in targets.items() if n in amax}, alpha)


def apply_smoothing(qmodel: nn.Module, factors: dict[str, torch.Tensor]) -> None:
    """Apply stored smoothing factors to the layers of `qmodel` that are quantized Linears with quantized inputs.

    Example:
        >>> import torch, quantpilot as qp
        >>> q = qp.quantize(torch.nn.Sequential(torch.nn.Linear(2, 2)), "int8-static")
        >>> apply_smoothing(q, {})  # nothing to smooth: unchanged
    """
    if not factors:
        return
    for name, layer in quantized_layers(qmodel):
        if name in factors and isinstance(layer, QuantLinear) and _quantizes_input(layer):
            layer.smooth(factors[name])


def _quantizes_input(layer: nn.Module) -> bool:
    return getattr(getattr(layer, "input_quantizer", None), "spec", None) is not None


def _is_histogram(config: CalibratorConfig) -> bool:
    return config.kind == "histogram"
