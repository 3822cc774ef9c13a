"""AWQ (Lin et al., 2024): activation-aware weight quantization for language models.

A few input channels of each Linear carry much larger activations than the rest, and the weight
columns they multiply matter most ("salient"). AWQ scales those columns up before quantizing
(`W' = W * s`, relatively finer grid) and divides the layer input by the same `s`, folding the
division into the op that produces the input, so the float model is unchanged:

1. per-input-channel activation magnitude `s_x = mean |x|` over the calibration tokens;
2. `s = s_x^alpha` (normalised so `sqrt(max(s) * min(s)) = 1`), alpha searched over the 20-point
   grid {0, 0.05, ..., 0.95}; the chosen alpha minimises the squared error of the block output
   with the group's weights fake-quantized (W4 g128 by default) against the float output; alpha = 0
   is plain RTN, so the search never does worse than RTN on its sample;
3. fold `1/s` into the previous op (LayerNorm / RMSNorm weight and bias, or the previous Linear's
   output rows) and `s` into the weights of every Linear that reads that input;
4. clip search: per output channel and group, shrink the weight range to `(1 - i/20)` of its max,
   i < 10, and keep the one with the smallest MSE of that group's partial dot products;
5. round-to-nearest quantization (asymmetric, zero point, per group) of the scaled, clipped weights
   by `quantpilot.algorithms.rtn`, stored packed (two int4 per byte, fp16 scales and zero points).

Layer groups ("pairs": an op and the Linear layers that read its output) are found from data flow:
a Linear whose input is the very tensor a LayerNorm/RMSNorm returned reads that norm (q/k/v after
ln_1 or input_layernorm, fc_in / c_fc / gate+up after ln_2 or post_attention_layernorm). Two pairs
through a Linear follow the reference implementation by name and shape: the attention output
projection after the value projection (v_proj -> o_proj/out_proj; GPT-2's fused c_attn value
rows -> attn.c_proj), and down_proj after up_proj. As in the reference, a norm-fed group is scored
on the output of the block its input enters (the whole attention for q/k/v, the whole MLP for
gate/up; `awq_blocks`): the outermost module called with the norm's output that holds all the
group's layers, replayed on inputs recorded from the first calibration batches. Linear-fed groups
(and models where no such module exists) are scored on the group's own Linear outputs. Clipping
skips query/key projections, whose errors the softmax amplifies (as the reference does).

Example:
    >>> import torch, quantpilot as qp
    >>> net = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 32))
    >>> batches = [torch.randn(64, 64) for _ in range(4)]
    >>> qnet = qp.algorithms.awq(net, batches, bits=4, group_size=32)
    >>> list(qnet.quantpilot_awq["alphas"])
    ['0 -> 1']
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..api import quantized_layers, run_pipeline
from ..deferred import CHOICES_ATTR
from ..nn.packed import weight_only_spec
from ..recipe import OUTPUT_HEADS
from ..spec import QuantSpec
from .awq_blocks import capture_inputs
from .awq_search import (  # noqa: F401  (the grid constants: re-exported)
    ALPHA_GRID,
    CLIP_GRID,
    CLIP_MAX_SHRINK,
    ScaleGroup,
    _clip_rows,
    _collect,
    _explicit_groups,
    _is_norm,
    _linear_pairs,
    _norm_groups,
    _search_clip,
    _search_scale,
    _search_scale_in_block,
    _Statistics,
    _targets,
    _tied_layers,
    _weight,
    find_scale_groups,
)
from .rtn import weight_only_recipe

__all__ = ["awq", "awq_fold_scales", "find_scale_groups", "ScaleGroup", "weight_spec", "MIN_CALIBRATION_TOKENS"]


# Fewer tokens than this give per-channel means too noisy to rank channels; the paper uses 128 x 512.
MIN_CALIBRATION_TOKENS = 256


def weight_spec(bits: int, group_size: int | None) -> QuantSpec:
    """The weight scheme AWQ searches for and stores: RTN's asymmetric codes with a zero point.

    Args:
        bits: 4 or 8.
        group_size: values per group along the input dimension (32, 64, 128, ...), or None for one
            scale per output channel.

    Returns:
        The `QuantSpec` (the same as `quantpilot.algorithms.rtn` stores).

    Example:
        >>> weight_spec(4, 128).granularity
        PerGroup(size=128)
    """
    return weight_only_spec(bits, group_size)


def _fold(model: nn.Module, group: ScaleGroup, s: torch.Tensor) -> None:
    """Divide the producer's output channels by s and multiply the consumers' input columns by s (float-exact)."""
    prev = model.get_submodule(group.prev)
    for name in group.layers:
        w = _weight(model.get_submodule(name))
        w.mul_(s.to(w.dtype))
    if _is_norm(prev):
        prev.weight.data.div_(s.to(prev.weight.dtype))
        if getattr(prev, "bias", None) is not None:
            prev.bias.data.div_(s.to(prev.bias.dtype))
        return
    rows = slice(None) if group.prev_rows is None else slice(*group.prev_rows)
    w = _weight(prev)
    w[rows].div_(s.to(w.dtype).unsqueeze(1))
    if prev.bias is not None:
        prev.bias.data[rows].div_(s.to(prev.bias.dtype))


def _check_args(bits, group_size, calib_batches, search_tokens) -> list[Any]:
    weight_spec(bits, group_size)
    if isinstance(search_tokens, bool) or not isinstance(search_tokens, int) or search_tokens < 1:
        raise ValueError(f"search_tokens must be a positive int, got {search_tokens!r}")
    if isinstance(calib_batches, torch.Tensor | dict | str):
        raise TypeError("calib_batches must be an iterable of batches (e.g. a list of {'input_ids': ...} dicts)")
    return list(calib_batches)


def awq_fold_scales(
    model: nn.Module,
    calib_batches: Iterable[Any],
    bits: int = 4,
    group_size: int | None = 128,
    *,
    pairs: Sequence[Any] | None = None,
    clip: bool = True,
    skip: Sequence[str] = OUTPUT_HEADS,
    search_tokens: int = 4096,
    seed: int = 0,
    inplace: bool = False,
) -> nn.Module:
    """AWQ's search steps on a float model: scales folded in (and weights clipped), nothing quantized yet.

    With `clip=False` the result computes the same function as `model` (up to float rounding);
    the clip search changes weights, which is what the following round-to-nearest step wants.

    Args:
        model: a float model (left unchanged unless `inplace`).
        calib_batches: calibration inputs (a list of dicts is passed as keyword arguments); at
            least `MIN_CALIBRATION_TOKENS` tokens; the paper uses 128 sequences of 512 tokens.
        bits, group_size: the weight scheme the search optimises for (see `weight_spec`).
        pairs: explicit layer groups, `[(previous op name, [layer names]), ...]` or `ScaleGroup`s,
            for models whose structure is not recognised; None finds them (`find_scale_groups`).
        clip: run the clip search.
        skip: fnmatch patterns of layers neither scaled nor clipped (the output head by default).
        search_tokens: rows of each layer's input kept (a random sample) for the searches; the
            channel means use every token.
        seed: seed of that sample.
        inplace: change `model` itself.

    Returns:
        The float model with AWQ applied; `model.quantpilot_awq` holds the chosen alphas per group,
        the block that scored each norm-fed group's search ("inspected"), the clipped layers and the
        layers no group scaled.

    Raises:
        ValueError: bad bits / group size, too little calibration data, or no layer group found.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.LayerNorm(32), torch.nn.Linear(32, 8))
        >>> x = torch.randn(300, 32)
        >>> folded = awq_fold_scales(net, [x], bits=4, group_size=16, clip=False)
        >>> torch.allclose(folded(x), net(x), atol=1e-5)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    batches = _check_args(bits, group_size, calib_batches, search_tokens)
    spec = weight_spec(bits, group_size)
    if quantized_layers(model):
        raise ValueError("this model is already quantized; pass the original float model to awq")
    batches = _checked_batches(model, bits, group_size, calib_batches, search_tokens)
    spec = weight_spec(bits, group_size)
    target = model if inplace else copy.deepcopy(model)
    targets = _checked_targets(target, skip, group_size)
    stats = _statistics(target, targets, batches, search_tokens, seed)
    groups, tied = _groups(target, stats, targets, pairs)
    with torch.no_grad():
        alphas, inspected, input_scale = _search_and_fold(target, groups, stats, batches, search_tokens, spec)
        clipped = _clip(targets, tied, stats, input_scale, spec) if clip else []
    scaled = {n for g in groups for n in g.layers}
    target.quantpilot_awq = {
        "alphas": alphas,
        "inspected": inspected,
        "clipped": clipped,
        "unscaled": [n for n in targets if n not in scaled],
        "bits": bits,
        "group_size": group_size,
    }
    return target


def _checked_batches(
    model: Any, bits: int, group_size: int | None, calib_batches: Any, search_tokens: int
) -> list[Any]:
    """The calibration batches, once the model and the arguments are checked (a float model, enough data)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    batches = _check_args(bits, group_size, calib_batches, search_tokens)
    if quantized_layers(model):
        raise ValueError("this model is already quantized; pass the original float model to awq")
    if not batches:
        raise ValueError(
            f"awq needs calibration batches: at least {MIN_CALIBRATION_TOKENS} tokens "
            "(the paper uses 128 sequences of 512 tokens)"
        )
    return batches


def _checked_targets(target: nn.Module, skip: Sequence[str], group_size: int | None) -> dict[str, nn.Module]:
    """The layers AWQ scales and clips; each one's width must be a multiple of the group size."""
    targets = _targets(target, skip)
    if not targets:
        raise ValueError(
            f"the model has no Linear (or GPT-2 Conv1D) layer outside skip={list(skip)}: nothing to quantize"
        )
    for name, m in targets.items():
        width = _weight(m).shape[1]
        if group_size is not None and width % group_size:
            raise ValueError(
                f"layer {name!r} has {width} input features, not a multiple of group_size={group_size}; "
                "pick a group size that divides every layer's width (e.g. 32 or 64), or skip the layer"
            )
    return targets


def _statistics(
    target: nn.Module, targets: dict[str, nn.Module], batches: list[Any], search_tokens: int, seed: int
) -> _Statistics:
    """One float pass: each layer's input statistics (enough tokens, or a clear error)."""
    stats = _collect(target, targets, batches, search_tokens, seed)
    seen = min((stats.rows.get(n, 0) for n in targets), default=0)
    if seen < MIN_CALIBRATION_TOKENS:
        raise ValueError(
            f"too little calibration data: some layers saw {seen} tokens, AWQ needs at least {MIN_CALIBRATION_TOKENS} "
            "(the paper uses 128 sequences of 512 tokens, e.g. calibration_batches(tokenizer, n=128))"
        )
    return stats


def _groups(
    target: nn.Module, stats: _Statistics, targets: dict[str, nn.Module], pairs: Sequence[Any] | None
) -> tuple[list[ScaleGroup], set[str]]:
    """The layer groups to scale (explicit `pairs`, or found), without tied weights; and the tied layers."""
    if pairs is not None:
        groups = _explicit_groups(target, pairs, targets)
    else:
        groups = _norm_groups(stats, targets) + _linear_pairs(target, targets)
        if not groups:
            raise ValueError(
                f"could not pair layers {sorted(targets)[:8]} with the LayerNorm/RMSNorm or Linear that produces their "
                "input (AWQ folds its scales there); pass the pairs explicitly, "
                "e.g. pairs=[('block.norm', ['block.fc1', 'block.fc2'])]"
            )
    # A weight shared with another module (a head tied to the embedding) must not be scaled or clipped in place.
    tied = _tied_layers(target, targets)
    return [g for g in groups if not tied.intersection(g.layers) and g.prev not in tied], tied


def _search_and_fold(
    target: nn.Module,
    groups: list[ScaleGroup],
    stats: _Statistics,
    batches: list[Any],
    search_tokens: int,
    spec: QuantSpec,
) -> tuple[dict[str, float], dict[str, str], dict[str, torch.Tensor]]:
    """Search each group's scales and fold them in, in order; returns the alphas, the inspected blocks and
    each layer's accumulated input scale."""
    # Inputs of the blocks that score norm-fed groups, recorded before any fold changes the model. A block
    # is replayed only while its input is still what was recorded: its group is searched before any other
    # group folds into the same producer, which holds because norm-fed groups come first.
    blocks = {g.inspect: target.get_submodule(g.inspect) for g in groups if g.inspect is not None}
    calls = capture_inputs(target, blocks, batches, search_tokens) if blocks else {}
    input_scale: dict[str, torch.Tensor] = {}
    alphas, inspected = {}, {}
    for group in groups:
        first = group.layers[0]
        x_mean = stats.mean_abs(first) / input_scale.get(first, 1.0)
        if group.inspect is not None and first not in input_scale:
            layers = [target.get_submodule(n) for n in group.layers]
            alphas[group.key], s = _search_scale_in_block(
                blocks[group.inspect], layers, calls[group.inspect], x_mean, spec
            )
            inspected[group.key] = group.inspect
        else:
            x = stats.sample(first) / input_scale.get(first, 1.0)
            weights = [_weight(target.get_submodule(n)).float() for n in group.layers]
            alphas[group.key], s = _search_scale(x, x_mean, weights, spec)
        _fold(target, group, s)
        for n in group.layers:
            input_scale[n] = input_scale.get(n, 1.0) * s
    return alphas, inspected, input_scale


def _clip(
    targets: dict[str, nn.Module],
    tied: set[str],
    stats: _Statistics,
    input_scale: dict[str, torch.Tensor],
    spec: QuantSpec,
) -> list[str]:
    """Clip each layer's weights (in place) to the searched per-group limits; returns the clipped layers."""
    clipped = []
    for name, m in targets.items():
        rows = _clip_rows(name, m)
        if rows is None or name in tied:
            continue
        w = _weight(m)
        sub = w[rows].float()
        x = stats.sample(name)[:512] / input_scale.get(name, 1.0)
        limit = _search_clip(sub, x, spec)
        clamped = torch.clamp(sub.reshape(sub.shape[0], limit.shape[1], -1), -limit, limit)
        w[rows] = clamped.reshape(sub.shape).to(w.dtype)  # through the view: the parameter itself
        clipped.append(name)
    return clipped


def awq(
    model: nn.Module,
    calib_batches: Iterable[Any],
    bits: int = 4,
    group_size: int | None = 128,
    *,
    pairs: Sequence[Any] | None = None,
    clip: bool = True,
    skip: Sequence[str] = OUTPUT_HEADS,
    search_tokens: int = 4096,
    seed: int = 0,
    inplace: bool = False,
) -> nn.Module:
    """AWQ weight-only quantization: search and fold the activation-aware scales, clip, then RTN.

    A thin wrapper over the pipeline: `quantize` with a weight-only recipe whose steps hold
    `quantpilot.steps.AWQ(...)`, `calibrate` on `calib_batches`, `freeze`.

    Args:
        model: a float model (left unchanged unless `inplace`).
        calib_batches: calibration inputs, at least `MIN_CALIBRATION_TOKENS` tokens (about 128
            sequences is the paper's amount).
        bits: 4 (default) or 8.
        group_size: 128 (default), 32, 64, ... or None for one scale per output channel.
        pairs, clip, skip, search_tokens, seed: see `awq_fold_scales`.
        inplace: quantize `model` itself.

    Returns:
        The frozen weight-only quantized model (activations float); `quantpilot_awq` reports the
        chosen alpha per layer group (also written to the saved map's "choices").

    Raises:
        ValueError: see `awq_fold_scales`.

    Example:
        >>> import torch, quantpilot as qp
        >>> net = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 8))
        >>> qnet = qp.algorithms.awq(net, [torch.randn(256, 64)], group_size=64)
        >>> type(qnet[1]).__name__, qp.is_frozen(qnet)
        ('WeightOnlyLinear', True)
    """
    from ..steps import AWQ

    batches = _checked_batches(model, bits, group_size, calib_batches, search_tokens)
    pairs = None if pairs is None else tuple(_as_pair(p) for p in pairs)
    step = AWQ(clip=clip, search_tokens=search_tokens, seed=seed, pairs=pairs)
    recipe = weight_only_recipe(bits, group_size, False, ("*",), tuple(skip), torch.float16, "awq", (step,))
    quantized = run_pipeline(model, recipe, batches, inplace=inplace)
    quantized.quantpilot_awq = quantized.__dict__.get(CHOICES_ATTR, {}).get("awq")
    return quantized


def _as_pair(pair: Any) -> Any:
    """A `ScaleGroup` or `(prev, [layers])` as the plain data the AWQ step stores (a mapping for a ScaleGroup)."""
    if isinstance(pair, ScaleGroup):
        return {"prev": pair.prev, "layers": list(pair.layers), "prev_rows": pair.prev_rows, "inspect": pair.inspect}
    return pair
