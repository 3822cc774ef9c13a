"""SmoothQuant as a recipe step: statistics on the float model, smoothing once the quantizers are in place.

Example:
    >>> import quantpilot as qp
    >>> r = qp.Recipe(steps=(SmoothQuant(alpha=0.8),))
    >>> qp.Recipe.from_dict(r.to_dict()).steps[0].alpha
    0.8
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

from .base import Step, StepContext, register_step

__all__ = ["SmoothQuant"]


@register_step
@dataclass(frozen=True)
class SmoothQuant(Step):
    """SmoothQuant (Xiao et al., 2023): divide input channels by `s`, multiply weight columns by `s`.

    Gathers each Linear input's per-channel max |x| from the float model on the recorded batches,
    then smooths every Linear whose input the recipe quantizes (and that matches `layers`, with a
    weight no other module shares); activation ranges are calibrated afterwards, on the smoothed model.

    Args:
        alpha: migration strength in [0, 1].
        layers: fnmatch patterns of the Linear layers to smooth.

    Example:
        >>> SmoothQuant().alpha
        0.5
    """

    name = "smoothquant"
    needs_data = True
    alpha: float = 0.5
    layers: tuple[str, ...] = ("*",)

    def __post_init__(self) -> None:
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
        object.__setattr__(self, "alpha", float(alpha))
        if isinstance(self.layers, str):
            raise TypeError(f"SmoothQuant layers is a list of fnmatch patterns, got the string {self.layers!r}")
        object.__setattr__(self, "layers", tuple(self.layers))

    def check(self, recipe: Any) -> None:
        if recipe.activations is None:
            raise ValueError(
                "the smoothquant step balances weights and quantized activations: give the recipe an "
                "activation scheme (e.g. Recipe.preset('int8-static'))"
            )

    def before_install(self, model: Any, recipe: Any, context: StepContext) -> Any:
        from ..algorithms.smoothquant import _input_statistics
        from ..nn import lookup

        names = {n for n, m in model.named_modules() if (e := lookup(m)) is not None and e.name in ("Linear", "Conv1D")}
        if not names:
            raise ValueError("the model has no Linear (or GPT-2 Conv1D) layer: SmoothQuant has nothing to smooth")
        context.state["smoothquant"] = _input_statistics(model, names, context.batches)
        return model

    def after_install(self, model: Any, recipe: Any, context: StepContext) -> Any:
        from ..algorithms.smoothquant import MIN_CALIBRATION_ROWS, _shared_parameters, shared_input_factors
        from ..nn import QuantLinear

        amax, rows, sources = context.state.pop("smoothquant")
        tied = _shared_parameters(model)
        targets = {
            name: m
            for name, m in model.named_modules()
            if isinstance(m, QuantLinear)
            and m.input_quantizer.spec is not None
            and any(fnmatch(name, p) for p in self.layers)
            and id(m.weight) not in tied
        }
        if not targets:
            raise ValueError(
                f"no Linear layer with quantized activations matches {list(self.layers)}: SmoothQuant only helps W8A8 "
                "layers; check the recipe's activations and the layer patterns"
            )
        starved = {n: rows.get(n, 0) for n in targets if rows.get(n, 0) < MIN_CALIBRATION_ROWS}
        if starved:
            raise ValueError(
                f"too little calibration data: layers {sorted(starved)[:3]} saw {min(starved.values())} input rows, "
                f"SmoothQuant needs at least {MIN_CALIBRATION_ROWS} (about 128 sequences is the usual amount)"
            )
        weights = {name: layer.weight for name, layer in targets.items()}
        for layer_name, factors in shared_input_factors(amax, sources, weights, self.alpha).items():
            targets[layer_name].smooth(factors)
        context.report["smoothquant"] = {layer_name: self.alpha for layer_name in targets}
        return model
