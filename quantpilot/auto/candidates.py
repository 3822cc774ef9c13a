"""What the autopilot tries: candidate recipes in families, built from one calibration pass, ranked by a proxy.

A family is a way of running int8 on the engine (dynamic int8, static int8 on the layers, static int8 with
the functional points, weight-only); its *head* (every layer quantized, default calibrators) is the fastest
variant it has, so timing the heads first tells which families can beat bf16 at all. Within a family the
variants change ranges (calibrators, SmoothQuant) or leave layers in float; all static variants are frozen
from one `CalibrationStatistics` pass (one more per SmoothQuant alpha, whose inputs differ).

The proxy is the relative squared error of the candidate's output rows against the float model's on a few
calibration batches, padding rows left out: no `eval_fn` call, used to order variants before they are scored.

Example:
    >>> import torch
    >>> relative_error([torch.ones(4)], [torch.ones(4) * 1.1]) > 0
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..algorithms.gptq_fixed_grid import gptq_installed_layers, input_hessians
from ..analysis.statistics import CalibrationStatistics, apply_smoothing, literal_pattern, quantizers_by_point
from ..api import freeze, quantize, run_pipeline
from ..batches import call_model, eval_mode, first_tensor
from ..calibrator_config import CalibratorConfig
from ..calibrators import MinMax
from ..nn import QuantLinear
from ..placement import ENGINES as PLACEMENT_ENGINES
from ..placement import placements_for
from ..recipe import Recipe
from ..selection import smoothquant_alpha
from ..selection_calibrators import CANDIDATE_CALIBRATORS, calibrator_label, choose_calibrators
from ..selection_stages import with_functional_ops
from ..spec import PerTensor
from ..steps import GPTQ, FoldBatchNorm, SmoothQuant, Step

__all__ = ["Candidate", "Family", "Builder", "relative_error", "families"]

# Families in the order the issue lists them (cheapest to set up first).
FAMILY_ORDER = ("dynamic", "static", "static+ops", "weight-only")
# Targets where per-batch (dynamic) activation ranges can run: a QDQ graph carries fixed ranges.
DYNAMIC_TARGETS = ("torch", "torch-int8")
# 0.95 is what NNCF's transformer preset migrates; on MiniLM 0.8 to 0.85 held the most cosine (benchmarks/README.md).
SMOOTHING_ALPHAS = (0.5, 0.8, 0.95)
# Smoothing flattens the channels a clipping calibrator was protecting: after it, min-max ranges beat the MSE
# histogram on MiniLM (held-out cosine 0.9978 against 0.9959 at alpha 0.8), so each alpha is also tried with them.
SMOOTHED_CALIBRATOR = CalibratorConfig("minmax")
PROXY_BATCHES = 2


@dataclass(frozen=True)
class Candidate:
    """One model the autopilot may return.

    Attributes:
        name: a readable, unique label ("static+ops mse", "static floats 2").
        kind: "fp32", "bf16" or "quantized".
        family: the family it belongs to ("float" for fp32/bf16).
        recipe: the recipe that rebuilds it (SmoothQuant as a step), None for fp32/bf16.
        alpha: the SmoothQuant alpha its statistics were gathered with, or None.
        why: what this variant changes and why it was tried.
    """

    name: str
    kind: str
    family: str
    recipe: Recipe | None = None
    alpha: float | None = None
    why: str = ""


@dataclass(frozen=True)
class Family:
    """A family's base recipe (its head: everything quantized) and whether its variants share statistics."""

    name: str
    recipe: Recipe
    static: bool
    why: str
    extra: tuple[Recipe, ...] = field(default_factory=tuple)


def _is_language_model(model: nn.Module) -> bool:
    return hasattr(model, "generate") and any(n.endswith("lm_head") for n, _ in model.named_modules())


def _has_smoothable(model: nn.Module, recipe: Recipe) -> bool:
    return any(isinstance(m, nn.Linear) for m in model.modules()) and recipe.activations is not None


def base_steps(model: nn.Module) -> tuple[Step, ...]:
    """Steps every recipe of this model starts with: BatchNorm folded into its convolution (exact in eval mode),
    so that an engine runs one int8 convolution instead of an int8 one and a float BatchNorm.

    Example:
        >>> base_steps(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1)))
        (FoldBatchNorm(),)
    """
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return (FoldBatchNorm(),) if has_bn else ()


def families(model: nn.Module, target: str) -> tuple[list[Family], list[tuple[str, str]]]:
    """The families this model and target allow, and `(family, why not)` for those left out.

    Example:
        >>> fams, skipped = families(torch.nn.Sequential(torch.nn.Linear(4, 4)), "torch-int8")
        >>> [f.name for f in fams], [s[0] for s in skipped]
        (['dynamic', 'static'], ['static+ops', 'weight-only'])
    """
    out, skipped = [], []
    steps = base_steps(model)
    preset = lambda name: Recipe.preset(name).replace(steps=steps)  # noqa: E731
    if target in DYNAMIC_TARGETS:
        out.append(Family("dynamic", preset("int8-dynamic"), False, "int8 weights, per-batch activation ranges"))
    else:
        skipped.append(("dynamic", f"{target} runs QDQ graphs with fixed activation ranges: no dynamic int8"))
    static = preset("int8-static")
    out.append(Family("static", static, True, "int8 weights and activations on every layer, calibrated ranges"))
    for name, recipe in _cnn_placements(model, target):
        out.append(Family(name, recipe.replace(steps=steps), True, recipe.notes["placement"]))
    with_ops, notes = with_functional_ops(model, static)
    if with_ops.ops:
        out.append(Family("static+ops", with_ops, True, f"static int8 plus the functional points {list(with_ops.ops)}"))
        out.extend(_transformer_placements(model, target, with_ops))
    else:
        skipped.append(("static+ops", "; ".join(f"{k}: {v}" for k, v in notes.items())))
    if _is_language_model(model):
        extra = (preset("w4a16-g128"),) if target in DYNAMIC_TARGETS else ()
        out.append(Family("weight-only", preset("w8a16"), False, "int8 weights, float activations", extra))
    else:
        skipped.append(("weight-only", "not a language model (weight-only pays off in memory-bound decoding)"))
    return out, skipped


def _own_activations(recipe: Recipe) -> Any:
    """The activation specs a recipe needs statistics of (its own, and those its overrides give single layers or
    points), or None when int8-static's shared pass serves it."""
    specs = {p: {"activations": o["activations"]} for p, o in recipe.overrides.items() if "activations" in o}
    if recipe.activations == Recipe.preset("int8-static").activations and not specs:
        return None
    return recipe.activations, specs


# quantpilot.placement's convolution placements offered as families of their own, by family name.
CNN_PLACEMENT_FAMILIES = {"static-u8": "int8-u8", "static-sym": "int8-sym"}


def _without_replayed_steps(recipe: Recipe) -> Recipe:
    """`recipe` without the steps the Builder replays itself: SmoothQuant (its statistics are smoothed already;
    the step would smooth twice) and GPTQ (run on cached Hessians after the smoothing, as the step would). Left
    in, either would also wait for calibration data at `freeze`."""
    return recipe.replace(steps=tuple(s for s in recipe.steps if not isinstance(s, SmoothQuant | GPTQ)))


def _cnn_placements(model: nn.Module, target: str) -> list[tuple[str, Recipe]]:
    """quantpilot.placement's uint8- and symmetric-activation convolution placements, for a CNN on a QDQ engine.

    On AMX, OpenVINO runs int8 convolution chains fast only when no activation carries an int8 zero point:
    asymmetric int8 ran EfficientNet-Lite0 at half of bf16's speed, uint8 (zero point 0 after ReLU6) at 1.33x
    and symmetric int8 at 1.10x (quiet `make bench`, benchmarks/README.md), so CNNs get both families too.
    """
    if target not in PLACEMENT_ENGINES or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return []
    found = dict(placements_for("cnn", target, model=model))
    return [(family, found[name]) for family, name in CNN_PLACEMENT_FAMILIES.items() if name in found]


# quantpilot.placement's transformer placements offered as families of their own, by family name.
TRANSFORMER_PLACEMENT_FAMILIES = {"static+ops sym-gptq": "int8-smooth-sym-gptq"}


def _transformer_placements(model: nn.Module, target: str, with_ops: Recipe) -> list[Family]:
    """The symmetric-input SmoothQuant+GPTQ placement, for a transformer whose attention matmuls are points.

    On AMX, symmetric int8 inputs (no zero-point compensation in the GEMMs) ran MiniLM ~1.1x faster than
    asymmetric ones in OpenVINO; SmoothQuant 0.8 and GPTQ on the int8 grids win back the accuracy they cost
    (benchmarks/README.md). Its steps are the family's own: SmoothQuant variants are not added to it.
    """
    if target not in PLACEMENT_ENGINES or target == "torch-int8":
        return []
    found = dict(placements_for("transformer", target, model=model))
    out = []
    for family, name in TRANSFORMER_PLACEMENT_FAMILIES.items():
        if name in found:
            recipe = found[name].replace(ops=with_ops.ops, steps=(*with_ops.steps, *found[name].steps))
            out.append(Family(family, recipe, True, recipe.notes["placement"]))
    return out


def relative_error(
    reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None] = ()
) -> float:
    """Mean over output rows (vectors along the last dim) of each row's squared error over its squared norm.

    Per row, so that a few large rows (BERT's special tokens, its outlier dimensions) cannot drown the rest;
    `masks[i]` (a batch's attention mask, shaped like the output's leading dims) leaves padding rows out:
    a padded position's hidden state is never read, yet it dominated the sum and ranked SmoothQuant 0.5 above
    0.8 on MiniLM, the reverse of their held-out cosines. 0 = identical outputs.

    Example:
        >>> relative_error([torch.ones(2, 4)], [torch.ones(2, 4) * 1.1])
        0.01...
    """
    errors = []
    for i, (ref, out) in enumerate(zip(reference, outputs, strict=True)):
        ref, out = ref.double(), out.double()
        if ref.dim() == 0:
            ref, out = ref.reshape(1, 1), out.reshape(1, 1)
        norms = ref.pow(2).sum(dim=-1)
        rows = (out - ref).pow(2).sum(dim=-1) / norms.clamp_min(max(float(norms.mean()) * 1e-6, 1e-30))
        mask = masks[i] if i < len(masks) else None
        if mask is not None and tuple(mask.shape) == tuple(rows.shape):
            rows = rows[mask.bool()]
        errors.append(rows.flatten())
    return float(torch.cat(errors).mean()) if errors else 0.0


def _row_mask(batch: Any) -> torch.Tensor | None:
    """The batch's attention mask (which rows of a sequence output are real tokens), if it has one."""
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return mask if isinstance(mask, torch.Tensor) else None


class Builder:
    """Builds candidates of one model from shared statistics, and scores them with the proxy.

    Args:
        model: the float model (never modified).
        calib: calibration batches.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> b = Builder(net, [torch.randn(8, 4)])
        >>> c = Candidate("static", "quantized", "static", Recipe.preset("int8-static"))
        >>> b.proxy(b.build(c)) < 1e-2
        True
    """

    def __init__(self, model: nn.Module, calib: list[Any], ops: Sequence[str] = ()) -> None:
        self.model, self.calib, self.ops = model, calib, tuple(ops)
        self._stats: dict[tuple[float | None, str | None], CalibrationStatistics] = {}
        self._ranges: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hessian_cache: dict[str, Any] = {}
        with eval_mode(model), torch.no_grad():
            self.reference = [first_tensor(call_model(model, b)).float() for b in calib[:PROXY_BATCHES]]
        self.masks = [_row_mask(b) for b in calib[:PROXY_BATCHES]]

    @property
    def calibration_passes(self) -> int:
        """Passes over the calibration data so far (one, plus one per SmoothQuant alpha tried)."""
        return len(self._stats)

    def statistics(self, alpha: float | None = None, activations: Any = None) -> CalibrationStatistics:
        """The statistics of int8-static with every functional point the model has (and a SmoothQuant alpha).

        Calibrated once and cached: the variants without points, or with other calibrators, reuse the pass.
        A family with other activation specs (`_own_activations`: its own, and per layer or point) needs its own pass.
        """
        key = (alpha, None if activations is None else repr(activations))
        if key not in self._stats:
            base = Recipe.preset("int8-static").replace(ops=self.ops, steps=base_steps(self.model))
            if activations is not None:
                spec, overrides = activations
                base = base.replace(activations=spec, overrides=overrides)
            self._stats[key] = CalibrationStatistics(self.model, base, self.calib, keep_inputs=True, smoothing=alpha)
        return self._stats[key]

    def build(self, candidate: Candidate) -> nn.Module:
        """The frozen quantized model of `candidate` (kind "quantized")."""
        recipe = candidate.recipe
        if recipe.activations is None or recipe.dynamic:
            return run_pipeline(self.model, recipe)  # no activation ranges to calibrate
        alpha = candidate.alpha if candidate.alpha is not None else smoothquant_alpha(recipe)
        stats = self.statistics(alpha, _own_activations(recipe))
        plain = _without_replayed_steps(recipe)
        # What `stats.build(plain)` does, with each point's range computed once for all the variants that share
        # it: a histogram's MSE/entropy search is most of a build's time, and variants differ in few points.
        qmodel = quantize(self.model, plain)
        apply_smoothing(qmodel, stats.smoothing)
        for name, q in quantizers_by_point(qmodel).items():
            q.calibrator = self._calibrator(stats, alpha, name, q.calibrator_config, q.spec)
        gptq = next((s for s in recipe.steps if isinstance(s, GPTQ)), None)
        if gptq is not None:
            gptq_installed_layers(qmodel, self._hessians(qmodel), damp=gptq.damp, block_size=gptq.block_size)
        return freeze(qmodel)

    def _hessians(self, qmodel: nn.Module) -> dict[str, Any]:
        """The float model's input Hessians of `qmodel`'s quantized Linears, gathered once per layer."""
        names = [n for n, m in qmodel.named_modules() if isinstance(m, QuantLinear) and m.weight_spec is not None]
        missing = [n for n in names if n not in self._hessian_cache]
        if missing:
            self._hessian_cache.update(input_hessians(self.model, missing, self.calib))
        return {n: self._hessian_cache[n] for n in names}

    def _calibrator(self, stats: CalibrationStatistics, alpha: float | None, point: str, config: Any, spec: Any):
        """The point's calibrator for `config`; a per-tensor range is searched once, then replayed by min-max
        over its two ends (which gives the same range, hence the same qparams)."""
        key = (alpha, point, calibrator_label(config), repr(spec))
        if key not in self._ranges:
            calibrator = stats.calibrator_for(point, config, spec)
            if not isinstance(spec.granularity, PerTensor):
                return calibrator
            self._ranges[key] = tuple(t.detach().clone() for t in calibrator.compute_range())
        replay = MinMax(spec)
        replay.collect(torch.stack([t.reshape(()) for t in self._ranges[key]]))
        return replay

    def proxy(self, qmodel: nn.Module) -> float:
        """Relative output error of `qmodel` against the float model on the first calibration batches."""
        with eval_mode(qmodel), torch.no_grad():
            outputs = [first_tensor(call_model(qmodel, b)).float() for b in self.calib[:PROXY_BATCHES]]
        return relative_error(self.reference, outputs, self.masks)

    def calibrator_variants(self, family: Family) -> list[Candidate]:
        """The head's variants with another activation calibrator: each whole-model candidate, and the
        per-layer choice of least output MSE (`selection.choose_calibrators`)."""
        head = family.recipe
        out = []
        for config in CANDIDATE_CALIBRATORS:
            if config == head.activation_calibrator:
                continue
            label = calibrator_label(config)
            out.append(Candidate(f"{family.name} {label}", "quantized", family.name,
                                 head.replace(activation_calibrator=config, name=f"{head.name}-{label}"),
                                 why=f"every activation range from {label}"))  # fmt: skip
        stats = self.statistics(smoothquant_alpha(head), _own_activations(head))
        # Per-layer choices are made on the smoothed statistics with round-to-nearest weights.
        choices = choose_calibrators(stats, _without_replayed_steps(head))
        overrides = {literal_pattern(n): {"activation_calibrator": c} for n, (c, _) in choices.items()
                     if c != head.activation_calibrator}  # fmt: skip
        if overrides:
            # Added to the head's own overrides (a placement's per-layer schemes), key by key.
            merged = {**head.overrides, **{p: {**head.overrides.get(p, {}), **o} for p, o in overrides.items()}}
            recipe = head.replace(overrides=merged, name=f"{head.name}-per-layer")
            why = f"per-layer calibrators of least output MSE ({len(overrides)} layers/points changed)"
            out.append(Candidate(f"{family.name} per-layer calibrators", "quantized", family.name, recipe, why=why))
        return out

    def smoothquant_variants(self, family: Family, recipe: Recipe) -> list[Candidate]:
        """`recipe` after SmoothQuant at each alpha, with its own calibrator and with min-max ranges (no per-layer
        overrides: they were chosen unsmoothed)."""
        if not _has_smoothable(self.model, recipe) or smoothquant_alpha(recipe) is not None:
            return []  # a family smoothed by its own recipe (a placement) keeps its alpha
        base = recipe.replace(overrides={})
        calibrators = [base.activation_calibrator]
        if base.activation_calibrator != SMOOTHED_CALIBRATOR:
            calibrators.append(SMOOTHED_CALIBRATOR)
        out = []
        for alpha in SMOOTHING_ALPHAS:
            smoothed = base.replace(steps=(*base.steps, SmoothQuant(alpha=alpha)), name=f"{base.name}-sq{alpha:g}")
            for config in calibrators:
                label = "" if config == base.activation_calibrator else f" {calibrator_label(config)}"
                why = f"SmoothQuant alpha {alpha:g} moves activation outliers into the weights, every layer int8"
                out.append(Candidate(
                    f"{family.name} smoothquant {alpha:g}{label}", "quantized", family.name,
                    smoothed.replace(activation_calibrator=config, name=smoothed.name + label.replace(" ", "-")),
                    alpha=alpha, why=why + (f", {calibrator_label(config)} ranges" if label else "")))  # fmt: skip
        return out

    def harm_ranking(self, qmodel: nn.Module) -> list[tuple[str, float]]:
        """Units (layers, points) of `qmodel`, most harmful first, harm = output noise-to-signal (proxy)."""
        from ..analysis.layer_errors import layer_errors

        try:
            report = layer_errors(qmodel, self.calib[:PROXY_BATCHES], float_model=self.model)
        except (RuntimeError, ValueError):
            return []  # e.g. transformers' Conv1D (transposed weights) in layer_errors: no ranking, said by callers
        return [(row.name, 10 ** (-row.worst_db / 10)) for row in report.worst()]
