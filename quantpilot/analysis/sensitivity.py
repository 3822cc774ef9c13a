"""Sensitivity analysis: how much the task metric suffers from quantizing each layer.

Two sweeps, both from one calibration pass (`CalibrationStatistics`):

* "one-at-a-time": only layer L is quantized, everything else float; harm = the metric's drop from FP32.
  Measures each layer's own damage, free of interactions.
* "leave-one-out": everything is quantized except L; harm = the metric's gain over the fully quantized
  model. Measures what leaving L in float buys, interactions included: the question hybrid
  quantization asks.

Example:
    >>> import torch, quantpilot as qp
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> data = [torch.randn(32, 8)]
    >>> ref = net(data[0]).detach()
    >>> score = lambda m: -float((m(data[0]).detach() - ref).pow(2).mean())  # higher is better
    >>> report = sensitivity(net, qp.Recipe(), data, score)
    >>> sorted(row.name for row in report.rows), report.rows[0].harm >= report.rows[1].harm
    (['0', '2'], True)
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from ..api import _show_progress, quantized_layers
from ..atomic import atomic_path
from ..functional_points import functional_points
from ..recipe import Recipe
from .layer_errors import layer_errors
from .statistics import CalibrationStatistics, literal_pattern

__all__ = ["SensitivityRow", "SensitivityReport", "sensitivity", "MODES"]

MODES = ("one-at-a-time", "leave-one-out")


@dataclass(frozen=True)
class SensitivityRow:
    """One layer: the metric of its variant and the harm (positive = quantizing this layer hurts).

    Example:
        >>> SensitivityRow("fc", 0.91, 0.04).harm
        0.04
    """

    name: str
    metric: float
    harm: float


@dataclass(frozen=True)
class SensitivityReport:
    """Layers sorted by harm, most harmful first, with the reference metrics of the sweep.

    Attributes:
        mode: "one-at-a-time" or "leave-one-out".
        rows: one `SensitivityRow` per swept layer, most harmful first.
        float_metric: the metric of the float model.
        quantized_metric: the metric with every layer of the recipe quantized.
        lower_is_better: the metric's direction.

    Example:
        >>> r = SensitivityReport("one-at-a-time", [SensitivityRow("a", 0.9, 0.05)], 0.95, 0.88, False)
        >>> r.names()
        ['a']
    """

    mode: str
    rows: list[SensitivityRow]
    float_metric: float
    quantized_metric: float
    lower_is_better: bool

    def names(self) -> list[str]:
        """Layer names, most harmful first.

        Example:
            >>> SensitivityReport("leave-one-out", [], 1.0, 1.0, False).names()
            []
        """
        return [row.name for row in self.rows]

    def to_csv(self, path: str | Path) -> Path:
        """Write rank, layer, metric and harm as CSV (refuses to overwrite an existing file).

        Example:
            >>> import tempfile, pathlib
            >>> r = SensitivityReport("one-at-a-time", [SensitivityRow("a", 0.9, 0.05)], 0.95, 0.88, False)
            >>> r.to_csv(pathlib.Path(tempfile.mkdtemp()) / "s.csv").read_text().splitlines()[1]
            '1,a,0.9,0.05'
        """
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["rank", "layer", "metric", "harm"])
            for rank, row in enumerate(self.rows, 1):
                writer.writerow([rank, row.name, row.metric, row.harm])
        return Path(path)

    def plot(self, path: str | Path, top: int = 30, title: str | None = None) -> Path:
        """Save a horizontal bar chart of the `top` most harmful layers as PNG (never overwrites).

        Example:
            >>> import tempfile, pathlib
            >>> r = SensitivityReport("one-at-a-time", [SensitivityRow("a", 0.9, 0.05)], 0.95, 0.88, False)
            >>> r.plot(pathlib.Path(tempfile.mkdtemp()) / "s.png").stat().st_size > 1000
            True
        """
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt

        rows = self.rows[: max(1, int(top))][::-1]
        fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.5))
        ax.barh([r.name for r in rows], [r.harm for r in rows], color="tab:red")
        what = (
            "drop from FP32 when only this layer is quantized"
            if self.mode == MODES[0]
            else ("gain over all-int8 when only this layer stays float")
        )
        ax.set_xlabel(f"harm: metric {what}")
        metrics = f"FP32 {self.float_metric:.4g}, all quantized {self.quantized_metric:.4g}"
        ax.set_title(title or f"sensitivity ({self.mode}); {metrics}")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        try:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=110, format="png")  # the temporary name has no .png suffix to go by
        finally:
            plt.close(fig)
        return Path(path)


def check_metric(value: Any, what: str) -> float:
    """`eval_fn`'s result as a float, or a TypeError/ValueError that says what `eval_fn` must return.

    Example:
        >>> check_metric(0.5, "eval_fn(float model)")
        0.5
    """
    if isinstance(value, bool) or not isinstance(value, int | float) and not hasattr(value, "__float__"):
        raise TypeError(f"{what} returned {type(value).__name__}; eval_fn(model) must return a number")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{what} returned NaN; eval_fn(model) must return a finite number")
    return value


def harm_of(metric: float, reference: float, lower_is_better: bool) -> float:
    """How much worse `metric` is than `reference` (negative when it is better).

    Example:
        >>> harm_of(0.9, 0.95, False), harm_of(11.0, 10.0, True)
        (0.04999999999999993, 1.0)
    """
    return metric - reference if lower_is_better else reference - metric


def sweep_units(
    stats: CalibrationStatistics,
    batches: Sequence[Any],
    top_k: int | None,
    layers: Sequence[str] | None,
    recipe: Recipe | None = None,
) -> list[str]:
    """The layers a sweep visits: `layers`, else every quantized layer, or the `top_k` worst by output SQNR
    (measured on `batches` with `recipe`, default the statistics' own).

    Example:
        >>> import torch, quantpilot as qp
        >>> stats = CalibrationStatistics(torch.nn.Sequential(torch.nn.Linear(2, 2)), qp.Recipe(), [torch.ones(1, 2)])
        >>> sweep_units(stats, [torch.ones(1, 2)], None, None)
        ['0']
    """
    names = quantization_units(stats.quantized)
    if layers is not None:
        if isinstance(layers, str):
            raise TypeError("layers must be a list of layer names, not one string")
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"layers {unknown[:5]} are not quantized by this recipe; quantized layers: {names[:8]}...")
        names = list(layers)
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int (or None for every layer), got {top_k!r}")
        errors = layer_errors(stats.build(recipe), batches, float_model=stats.model)
        worst = [row.name for row in errors.worst() if row.name in names]
        names = [n for n in names if n in set(worst[:top_k])]
    return names


def quantization_units(qmodel: nn.Module) -> list[str]:
    """What a sweep can leave in float: the quantized layers, then the functional points ("blocks.0:add").

    Example:
        >>> import torch, quantpilot as qp
        >>> quantization_units(qp.quantize(torch.nn.Sequential(torch.nn.Linear(2, 2))))
        ['0']
    """
    return [name for name, _ in quantized_layers(qmodel)] + functional_points(qmodel)


def variant(recipe: Recipe, float_layers: Iterable[str]) -> Recipe:
    """`recipe` with the named layers (exact names) also left in float.

    Example:
        >>> import quantpilot as qp
        >>> variant(qp.Recipe(skip=("head",)), ["blocks.0"]).skip
        ('head', 'blocks.0')
    """
    extra = tuple(literal_pattern(n) for n in float_layers)
    return recipe.replace(skip=recipe.skip + tuple(p for p in extra if p not in recipe.skip))


def sensitivity(
    model: nn.Module,
    recipe: Recipe | str,
    calib_batches: Iterable[Any],
    eval_fn: Callable[[nn.Module], float],
    mode: str = "one-at-a-time",
    *,
    lower_is_better: bool = False,
    top_k: int | None = None,
    layers: Sequence[str] | None = None,
    progress: bool | None = None,
    statistics: CalibrationStatistics | None = None,
    reference_metrics: tuple[float, float] | None = None,
) -> SensitivityReport:
    """Rank the recipe's layers by the harm quantizing them does to `eval_fn`'s metric.

    Calibration runs once; every variant is frozen from those statistics (`CalibrationStatistics`),
    so a sweep costs one `eval_fn` call per layer plus two (FP32 and all-quantized).

    Args:
        model: the float model (not modified).
        recipe: a `Recipe` or preset name.
        calib_batches: calibration batches (kept in a list: they are reused).
        eval_fn: `eval_fn(model) -> float`, higher is better unless `lower_is_better`.
        mode: "one-at-a-time" (only this layer quantized) or "leave-one-out" (only this layer float).
        lower_is_better: the metric is a loss or error rate.
        top_k: sweep only the `top_k` layers with the lowest output SQNR (`layer_errors`), to stay cheap
            on big models.
        layers: sweep exactly these layer names instead.
        progress: show a progress bar (default: on an interactive terminal outside CI).
        statistics: reuse statistics gathered for the same model and recipe.
        reference_metrics: `(FP32 metric, all-quantized metric)` when already measured: saves two `eval_fn` calls.

    Returns:
        A `SensitivityReport`, most harmful layer first.

    Raises:
        ValueError: unknown mode, empty calibration data, or layer names the recipe does not quantize.

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> r = sensitivity(net, "int8-static", [torch.randn(8, 4)], lambda m: 1.0, mode="leave-one-out")
        >>> r.rows[0].name, r.rows[0].harm
        ('0', 0.0)
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {list(MODES)}")
    if not callable(eval_fn):
        raise TypeError("eval_fn must be a function model -> float")
    recipe = Recipe.preset(recipe) if isinstance(recipe, str) else recipe
    batches = list(calib_batches)
    stats = statistics if statistics is not None else CalibrationStatistics(model, recipe, batches)
    units = sweep_units(stats, batches, top_k, layers, recipe)
    all_units = quantization_units(stats.quantized)
    float_metric, quantized_metric = _reference_metrics(model, stats, recipe, eval_fn, reference_metrics)
    reference = float_metric if mode == MODES[0] else quantized_metric
    show = _show_progress() if progress is None else progress
    rows, refused = _sweep(
        stats, recipe, eval_fn, mode, units, all_units, float_metric, reference, lower_is_better, show
    )
    if refused:
        warnings.warn(
            f"sensitivity: {refused[:5]} could not be quantized on their own ({mode}) and are not ranked; "
            "use mode='leave-one-out' to rank them",
            stacklevel=2,
        )
    rows.sort(key=lambda r: r.harm, reverse=True)
    return SensitivityReport(mode, rows, float_metric, quantized_metric, lower_is_better)


def _reference_metrics(
    model: nn.Module,
    stats: CalibrationStatistics,
    recipe: Recipe,
    eval_fn: Callable[[nn.Module], float],
    reference_metrics: tuple[float, float] | None,
) -> tuple[float, float]:
    """(FP32 metric, all-quantized metric): the given ones checked, else measured with `eval_fn`."""
    if reference_metrics is not None:
        float_metric, quantized_metric = (check_metric(v, "reference_metrics") for v in reference_metrics)
        return float_metric, quantized_metric
    float_metric = check_metric(eval_fn(model), "eval_fn(float model)")
    quantized_metric = check_metric(eval_fn(stats.build(recipe)), "eval_fn(quantized model)")
    return float_metric, quantized_metric


def _sweep(
    stats: CalibrationStatistics,
    recipe: Recipe,
    eval_fn: Callable[[nn.Module], float],
    mode: str,
    units: Sequence[str],
    all_units: Sequence[str],
    float_metric: float,
    reference: float,
    lower_is_better: bool,
    show: bool,
) -> tuple[list[SensitivityRow], list[str]]:
    """One variant per unit: (rows in sweep order, units whose variant could not be quantized)."""
    rows, refused = [], []
    for name in tqdm(units, desc=f"sensitivity ({mode})", unit="layer", disable=not show):
        floats = [n for n in all_units if n != name] if mode == MODES[0] else [name]
        if set(floats) >= set(all_units):
            metric = float_metric  # nothing left to quantize: the variant is the float model
        else:
            try:
                qmodel = stats.build(variant(recipe, floats))
            except ValueError:
                refused.append(name)  # e.g. a residual add alone: quantize needs at least one layer
                continue
            metric = check_metric(eval_fn(qmodel), f"eval_fn(variant for '{name}')")
        # one-at-a-time: the drop from FP32; leave-one-out: what leaving it float recovers over all-int8.
        if mode == MODES[0]:
            harm = harm_of(metric, reference, lower_is_better)
        else:
            harm = harm_of(reference, metric, lower_is_better)
        rows.append(SensitivityRow(name, metric, harm))
    return rows, refused
