"""GPTQ and AWQ as recipe steps: they run inside `freeze`, on the float model and the recorded batches.

Both need a weight-only recipe (uint4 / uint8 weights, float activations). GPTQ quantizes the
layers block by block and puts packed `WeightOnlyLinear` layers in place (the walker then leaves
them alone); AWQ folds its searched scales into the float model and clips it, and the recipe's
round-to-nearest weights, installed next, quantize the result.

Example:
    >>> import quantpilot as qp
    >>> r = qp.Recipe.preset("w4a16-g128").replace(steps=(GPTQ(damp=0.02),), module_types=("Linear",))
    >>> qp.Recipe.from_dict(r.to_dict()).steps
    (GPTQ(block_size=128, damp=0.02, act_order=False, blocks=None),)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Step, StepContext, register_step

__all__ = ["GPTQ", "AWQ", "check_weight_only", "check_fixed_grid"]


def check_weight_only(step: Step, recipe: Any) -> None:
    """Raise unless `recipe` stores packed unsigned weights with float activations, what GPTQ/AWQ produce.

    Example:
        >>> import quantpilot as qp
        >>> check_weight_only(GPTQ(), qp.Recipe.preset("w4a16-g128"))
    """
    weights = recipe.weights
    if weights is None or weights.dtype.value not in ("uint4", "uint6", "uint8") or recipe.activations is not None:
        raise ValueError(
            f"the {step.name} step quantizes weights only, to packed unsigned codes: give the recipe "
            "weights=QuantSpec('uint4', 'uint6' or 'uint8', symmetric=False, "
            "granularity=PerGroup(128) or PerChannel(0)) "
            "and activations=None (e.g. Recipe.preset('w4a16-g128'))"
        )


def _linear_targets(model: Any, recipe: Any) -> list[str]:
    from ..install import plan_layers

    plan, _ = plan_layers(model, recipe)
    return [name for name, _, entry, layer, _ in plan if entry.name in ("Linear", "Conv1D") and layer.weights]


def _scale_dtype(recipe: Any) -> Any:
    import torch

    return getattr(torch, recipe.scale_dtype)


@register_step
@dataclass(frozen=True)
class GPTQ(Step):
    """GPTQ (Frantar et al., 2022) on the recipe's Linear layers.

    Weight-only recipes (packed unsigned codes, float activations): block by block, each layer replaced by a
    packed one. Recipes with quantized activations (W8A8): every Linear's codes are chosen on its own grid
    (`quantpilot.algorithms.gptq_fixed_grid`) after the steps before this one (SmoothQuant) changed the
    weights, from Hessians gathered on the float model; put GPTQ after SmoothQuant in `steps`.

    Args:
        block_size: columns per lazy-update block.
        damp: Hessian dampening as a fraction of its mean diagonal.
        act_order: visit columns by decreasing Hessian diagonal (static groups).
        blocks: qualified name of the `nn.ModuleList` of blocks (None: found automatically).

    Example:
        >>> GPTQ(act_order=True).to_dict()["act_order"]
        True
    """

    name = "gptq"
    needs_data = True
    reads_weights_only = True  # each quantized layer is replaced by a packed one; the float weight is only read
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False
    blocks: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"GPTQ block_size must be a positive integer, got {self.block_size!r}")
        if isinstance(self.damp, bool) or not isinstance(self.damp, int | float) or not 0 < float(self.damp) < 1:
            raise ValueError(f"GPTQ damp is a fraction of the mean Hessian diagonal in (0, 1), got {self.damp!r}")

    def check(self, recipe: Any) -> None:
        if recipe.activations is None:
            check_weight_only(self, recipe)
            return
        check_fixed_grid(self, recipe)

    def before_install(self, model: Any, recipe: Any, context: StepContext) -> Any:
        from ..algorithms.gptq import gptq_blocks
        from ..algorithms.gptq_fixed_grid import input_hessians

        if recipe.activations is not None:
            context.state["gptq"] = input_hessians(model, _linear_targets(model, recipe), context.batches)
            return model

        # gptq_blocks puts a packed layer in place of each layer it quantizes; the walker leaves those alone.
        gptq_blocks(
            model,
            context.batches,
            _linear_targets(model, recipe),
            recipe.weights,
            block_size=self.block_size,
            damp=self.damp,
            act_order=self.act_order,
            blocks=self.blocks,
            scale_dtype=_scale_dtype(recipe),
        )
        return model

    def after_install(self, model: Any, recipe: Any, context: StepContext) -> Any:
        from ..algorithms.gptq_fixed_grid import gptq_installed_layers

        hessians = context.state.pop("gptq", None)
        if hessians is not None:
            done = gptq_installed_layers(model, hessians, damp=self.damp, block_size=self.block_size)
            context.report["gptq"] = {"layers": len(done), "grid": "the layers' own (W8A8)"}
        return model


def check_fixed_grid(step: Step, recipe: Any) -> None:
    """Raise unless GPTQ can run on a W8A8 recipe's own grids: integer per-channel or per-tensor weights,
    no act-order, and every SmoothQuant step before it (smoothing after GPTQ would move its grid).

    Example:
        >>> import quantpilot as qp
        >>> from quantpilot.steps import SmoothQuant
        >>> check_fixed_grid(GPTQ(), qp.Recipe.preset("int8-static").replace(steps=(SmoothQuant(), GPTQ())))
    """
    from ..algorithms.gptq_fixed_grid import fits_fixed_grid

    if recipe.weights is None or not fits_fixed_grid(recipe.weights):
        raise ValueError(
            "GPTQ with quantized activations needs integer per-channel or per-tensor weights (e.g. "
            "Recipe.preset('int8-static')); grouped 4-bit weights are weight-only: activations=None"
        )
    if step.act_order or step.blocks is not None:
        raise ValueError("GPTQ's act_order and blocks are for weight-only recipes: leave them unset for W8A8")
    names = [s.name for s in recipe.steps]
    if "smoothquant" in names and names.index("smoothquant") > names.index(step.name):
        raise ValueError("put SmoothQuant before GPTQ in the recipe's steps: smoothing after GPTQ moves its grid")


def _plain_pair(pair: Any) -> Any:
    """`[prev, [layers]]` as a tuple pair, or `{"prev", "layers", "prev_rows", "inspect"}` as a mapping."""
    if isinstance(pair, dict) and isinstance(pair.get("prev"), str) and isinstance(pair.get("layers"), list | tuple):
        return {**pair, "layers": list(pair["layers"])}
    if isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], str):
        layers = (pair[1],) if isinstance(pair[1], str) else tuple(str(n) for n in pair[1])
        return (pair[0], layers)
    raise TypeError(
        f"each pair is (previous op name, [layer names]) or {{prev, layers, prev_rows, inspect}}, got {pair!r}"
    )


@register_step
@dataclass(frozen=True)
class AWQ(Step):
    """AWQ (Lin et al., 2024): activation-aware scales searched, folded and clipped; RTN follows.

    Args:
        clip: run the clip search after the scale search.
        search_tokens: input rows of each layer sampled for the searches.
        seed: seed of that sample.
        pairs: explicit groups `[[previous op, [layer, ...]], ...]` for models whose structure is not
            recognised (None: found from data flow).

    Example:
        >>> AWQ(clip=False).to_dict()
        {'name': 'awq', 'clip': False, 'search_tokens': 4096, 'seed': 0, 'pairs': None}
    """

    name = "awq"
    needs_data = True
    clip: bool = True
    search_tokens: int = 4096
    seed: int = 0
    pairs: tuple | None = None

    def __post_init__(self) -> None:
        if self.pairs is not None:
            object.__setattr__(self, "pairs", tuple(_plain_pair(p) for p in self.pairs))

    def check(self, recipe: Any) -> None:
        check_weight_only(self, recipe)

    def before_install(self, model: Any, recipe: Any, context: StepContext) -> Any:
        from ..algorithms.awq import awq_fold_scales

        spec = recipe.weights
        group_size = getattr(spec.granularity, "size", None)
        folded = awq_fold_scales(
            model,
            context.batches,
            spec.dtype.bits,
            group_size,
            pairs=self.pairs,
            clip=self.clip,
            skip=recipe.skip,
            search_tokens=self.search_tokens,
            seed=self.seed,
            inplace=True,
        )
        context.report["awq"] = folded.__dict__.pop("quantpilot_awq", None)
        return folded
