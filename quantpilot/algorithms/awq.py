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
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn

from ..api import quantized_layers
from ..batches import call_model, eval_mode
from ..deferred import CHOICES_ATTR
from ..nn.packed import weight_only_spec
from ..nn.registry import is_linear
from ..primitives import choose_qparams, fake_quantize, min_max
from ..spec import PerGroup, QuantSpec
from .awq_blocks import Call, block_error, capture_inputs, inspected_module
from .rtn import run_pipeline, weight_only_recipe

__all__ = ["awq", "awq_fold_scales", "find_scale_groups", "ScaleGroup", "weight_spec", "MIN_CALIBRATION_TOKENS"]

# Fewer tokens than this give per-channel means too noisy to rank channels; the paper uses 128 x 512.
MIN_CALIBRATION_TOKENS = 256
ALPHA_GRID = 20
CLIP_GRID = 20
CLIP_MAX_SHRINK = 0.5
_QUERY_KEY = ("q_proj", "k_proj", "query", "key", "q", "k", "wq", "wk")
# (producer, consumer) Linear names inside one parent module, as the reference implementation pairs them.
_LINEAR_PAIRS = (("v_proj", "o_proj"), ("v_proj", "out_proj"), ("up_proj", "down_proj"), ("c_attn", "c_proj"))


@dataclass(frozen=True)
class ScaleGroup:
    """An op and the Linear layers reading its output: one AWQ scale vector is searched for all of them.

    Args:
        prev: qualified name of the LayerNorm / RMSNorm / Linear producing the shared input.
        layers: qualified names of the Linear (or GPT-2 Conv1D) layers reading it.
        prev_rows: for a Linear producer, the output rows (start, stop) that feed `layers`
            (GPT-2's fused c_attn feeds attn.c_proj from its value third); None: all rows.
        inspect: qualified name of the module whose output scores the alpha search (the attention
            or MLP block the input enters); None: the layers' own outputs.

    Example:
        >>> ScaleGroup("ln_1", ("attn.c_attn",)).key
        'ln_1 -> attn.c_attn'
    """

    prev: str
    layers: tuple[str, ...]
    prev_rows: tuple[int, int] | None = None
    inspect: str | None = None

    @property
    def key(self) -> str:
        """A readable label, `prev -> layer, layer`."""
        return f"{self.prev} -> {', '.join(self.layers)}"


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


def _is_linear(module: nn.Module) -> bool:
    return is_linear(module)  # the registry's one decision, subclasses included


def _is_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return "norm" in type(module).__name__.lower() and isinstance(weight, torch.Tensor) and weight.dim() == 1


def _weight(module: nn.Module) -> torch.Tensor:
    """The weight as an (out, in) view sharing memory: a Linear's own, or a GPT-2 Conv1D's transpose."""
    return module.weight.data if isinstance(module, nn.Linear) else module.weight.data.t()


def _fake_quant(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return fake_quantize(w, *choose_qparams(*min_max(w, spec), spec), spec)


def _targets(model: nn.Module, skip: Sequence[str]) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if _is_linear(m) and not any(fnmatch(n, p) for p in skip)}


class _Statistics:
    """Per-Linear input statistics from one pass of the float model: mean |x| per channel and sampled rows."""

    def __init__(self, names: Iterable[str], rows_per_batch: int, seed: int) -> None:
        self.abs_sum: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.samples: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.rows_per_batch = rows_per_batch
        self.seed = seed
        self.batch_index = 0
        self.producer: dict[str, str] = {}  # linear name -> norm whose output tensor it received
        self.receivers: dict[str, list[str]] = {}  # norm name -> modules called with its output, in call order

    def record(self, name: str, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.abs_sum[name] = x.abs().sum(0) + self.abs_sum.get(name, 0.0)
        self.rows[name] = self.rows.get(name, 0) + x.shape[0]
        # The same generator state for every layer of a batch: layers sharing an input sample the same rows.
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.batch_index)
        take = torch.randperm(x.shape[0], generator=g)[: self.rows_per_batch]
        self.samples[name].append(x[take].clone())

    def mean_abs(self, name: str) -> torch.Tensor:
        return self.abs_sum[name] / self.rows[name]

    def sample(self, name: str) -> torch.Tensor:
        return torch.cat(self.samples[name])


def _collect(model: nn.Module, targets: dict[str, nn.Module], batches: list[Any], search_tokens: int, seed: int):
    stats = _Statistics(targets, max(1, math.ceil(search_tokens / len(batches))), seed)
    norm_names = {m: n for n, m in model.named_modules() if _is_norm(m)}
    norm_outputs: dict[int, tuple[str, torch.Tensor]] = {}

    def on_norm(module, _inputs, output):
        if stats.batch_index == 0 and isinstance(output, torch.Tensor):
            # Keep the tensor referenced so its id cannot be reused by another tensor during the pass.
            norm_outputs[id(output)] = (norm_names[module], output)

    def on_linear(name):
        def hook(_module, inputs):
            x = inputs[0]
            if stats.batch_index == 0 and id(x) in norm_outputs and norm_outputs[id(x)][1] is x:
                stats.producer[name] = norm_outputs[id(x)][0]
            stats.record(name, x)

        return hook

    def on_module(name):
        def hook(_module, args, kwargs):
            if stats.batch_index != 0:
                return
            for x in (*args, *kwargs.values()):
                if isinstance(x, torch.Tensor) and id(x) in norm_outputs and norm_outputs[id(x)][1] is x:
                    stats.receivers.setdefault(norm_outputs[id(x)][0], []).append(name)
                    return

        return hook

    handles = [m.register_forward_hook(on_norm) for m in norm_names]
    handles += [m.register_forward_pre_hook(on_linear(n)) for n, m in targets.items()]
    handles += [
        m.register_forward_pre_hook(on_module(n), with_kwargs=True)
        for n, m in model.named_modules()
        if n and m not in norm_names and n not in targets
    ]
    try:
        with eval_mode(model), torch.no_grad():
            for index, batch in enumerate(batches):
                stats.batch_index = index
                call_model(model, batch)
                norm_outputs.clear()
    finally:
        for h in handles:
            h.remove()
    return stats


def _linear_pairs(model: nn.Module, targets: dict[str, nn.Module]) -> list[ScaleGroup]:
    """Producer -> consumer Linear pairs by the reference implementation's names, where the shapes allow."""
    groups = []
    for prev_leaf, next_leaf in _LINEAR_PAIRS:
        for name in targets:
            parent, _, leaf = name.rpartition(".")
            if leaf != prev_leaf:
                continue
            consumer = f"{parent}.{next_leaf}" if parent else next_leaf
            if consumer not in targets:
                continue
            out_rows = _weight(targets[name]).shape[0]
            in_cols = _weight(targets[consumer]).shape[1]
            if prev_leaf == "c_attn":
                # GPT-2's fused q|k|v projection: only the value third feeds the output projection.
                if out_rows != 3 * in_cols:
                    continue
                groups.append(ScaleGroup(name, (consumer,), (2 * in_cols, 3 * in_cols)))
            elif out_rows == in_cols:  # grouped-query attention (fewer v rows than o inputs) cannot be folded
                groups.append(ScaleGroup(name, (consumer,)))
    return groups


def find_scale_groups(model: nn.Module, example_batch: Any, *, skip: Sequence[str] = ("lm_head",)) -> list[ScaleGroup]:
    """The AWQ layer groups of a model, found by running one batch (see the module docstring).

    Args:
        model: a float model (not modified).
        example_batch: one input, as `call_model` passes it (a dict is passed as keyword arguments).
        skip: fnmatch patterns of layers left out (and left float by `awq`).

    Returns:
        The groups in execution order: norm-fed groups, then Linear-fed ones.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))
        >>> [g.key for g in find_scale_groups(net, torch.randn(2, 8))]
        ['0 -> 1']
    """
    targets = _targets(model, skip)
    stats = _collect(model, targets, [example_batch], 1, 0)
    return _norm_groups(stats, targets) + _linear_pairs(model, targets)


def _norm_groups(stats: _Statistics, targets: dict[str, nn.Module]) -> list[ScaleGroup]:
    by_norm: dict[str, list[str]] = {}
    for name in targets:  # named_modules order: q, k, v stay in model order
        if name in stats.producer:
            by_norm.setdefault(stats.producer[name], []).append(name)
    return [
        ScaleGroup(norm, tuple(layers), inspect=inspected_module(norm, tuple(layers), stats.receivers.get(norm, [])))
        for norm, layers in by_norm.items()
    ]


def _explicit_groups(model: nn.Module, pairs: Sequence[Any], targets: dict[str, nn.Module]) -> list[ScaleGroup]:
    modules = dict(model.named_modules())
    groups = []
    for item in pairs:
        if isinstance(item, ScaleGroup):
            group = item
        elif isinstance(item, dict):
            rows = item.get("prev_rows")
            group = ScaleGroup(item["prev"], tuple(item["layers"]), None if rows is None else tuple(rows),
                               item.get("inspect"))
        elif isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str):
            layers = (item[1],) if isinstance(item[1], str) else tuple(item[1])
            group = ScaleGroup(item[0], layers)
        else:
            raise TypeError(f"each pair is (previous op name, [layer names]) or a ScaleGroup, got {item!r}")
        prev = modules.get(group.prev)
        if prev is None or not (_is_norm(prev) or _is_linear(prev)):
            raise ValueError(f"pair {group.key}: {group.prev!r} is not a LayerNorm/RMSNorm or Linear of this model")
        width = None
        for layer in group.layers:
            if layer not in targets:
                raise ValueError(f"pair {group.key}: {layer!r} is not a Linear of this model outside skip patterns")
            width = width or _weight(targets[layer]).shape[1]
        produced = prev.weight.shape[0] if _is_norm(prev) else _weight(prev).shape[0]
        if group.prev_rows is not None:
            produced = group.prev_rows[1] - group.prev_rows[0]
        if produced != width or any(_weight(targets[n]).shape[1] != width for n in group.layers):
            raise ValueError(f"pair {group.key}: {group.prev!r} produces {produced} channels, the layers read {width}")
        if group.inspect is not None and (
            group.inspect not in modules or not all(n.startswith(group.inspect + ".") for n in group.layers)
        ):
            raise ValueError(
                f"pair {group.key}: inspect={group.inspect!r} must name a module of this model that contains "
                "every layer of the pair (the block whose output scores the search), or be None"
            )
        groups.append(group)
    return groups


def _tied_layers(model: nn.Module, targets: dict[str, nn.Module]) -> set[str]:
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    return {n for n, m in targets.items() if counts.get(id(m.weight), 0) > 1}


def _search_scale(x: torch.Tensor, x_mean: torch.Tensor, weights: list[torch.Tensor], spec: QuantSpec):
    """The alpha (and scale vector) whose fake-quantized group output is closest to the float one."""
    refs = [x @ w.t() for w in weights]
    best = (math.inf, 0.0, torch.ones_like(x_mean))
    for alpha, s in _scales(x_mean):
        # W' = Q(W * s) / s is what the layer computes once x / s is folded into the previous op.
        err = sum(
            float((x @ (_fake_quant(w * s, spec) / s).t() - ref).pow(2).sum())
            for w, ref in zip(weights, refs, strict=True)
        )
        if err < best[0]:
            best = (err, alpha, s)
    return best[1], best[2]


def _scales(x_mean: torch.Tensor):
    """The 20 candidate scale vectors `s_x^alpha`, each normalised so sqrt(max * min) = 1."""
    for i in range(ALPHA_GRID):
        alpha = i / ALPHA_GRID
        s = x_mean.pow(alpha).clamp(min=1e-4)
        yield alpha, s / (s.max() * s.min()).sqrt()


def _search_scale_in_block(block: nn.Module, layers: list[nn.Module], calls: list[Call], x_mean: torch.Tensor,
                           spec: QuantSpec):
    """The alpha (and scale vector) whose block output, with the layers fake-quantized, is closest to the float one."""
    views = [_weight(m) for m in layers]
    originals = [w.clone() for w in views]
    with torch.no_grad():
        reference = [block(*args, **kwargs) for args, kwargs in calls]
    best = (math.inf, 0.0, torch.ones_like(x_mean))
    try:
        for alpha, s in _scales(x_mean):
            for view, w in zip(views, originals, strict=True):
                view.copy_((_fake_quant(w.float() * s, spec) / s).to(view.dtype))
            err = block_error(block, calls, reference)
            if err < best[0]:
                best = (err, alpha, s)
    finally:
        for view, w in zip(views, originals, strict=True):
            view.copy_(w)
    return best[1], best[2]


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


def _clip_rows(name: str, module: nn.Module) -> slice | None:
    """Which output rows the clip search may shrink: none for query/key projections, only v of a fused qkv."""
    leaf = name.rpartition(".")[2]
    if leaf in _QUERY_KEY:
        return None
    if leaf == "c_attn":
        third = _weight(module).shape[0] // 3
        return slice(2 * third, 3 * third)
    return slice(None)


def _search_clip(w: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per (output channel, group) max |w| after the reference's shrink search; shape (out, groups, 1)."""
    out_ch, width = w.shape
    size = spec.granularity.size if isinstance(spec.granularity, PerGroup) else width
    groups = width // size
    xg = x.reshape(-1, groups, size).transpose(0, 1)  # (groups, tokens, size)
    wg = w.reshape(out_ch, groups, size)
    ref = torch.bmm(xg, wg.permute(1, 2, 0))  # (groups, tokens, out): each group's partial dot products
    org_max = wg.abs().amax(dim=-1, keepdim=True)
    best_max, best_err = org_max.clone(), torch.full_like(org_max, math.inf)
    for i in range(int(CLIP_MAX_SHRINK * CLIP_GRID)):
        max_val = org_max * (1 - i / CLIP_GRID)
        q = _fake_quant(torch.clamp(wg, -max_val, max_val).reshape(out_ch, width), spec).reshape(out_ch, groups, size)
        err = (torch.bmm(xg, q.permute(1, 2, 0)) - ref).pow(2).mean(dim=1).t().unsqueeze(-1)  # (out, groups, 1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, max_val, best_max)
    return best_max


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
    skip: Sequence[str] = ("lm_head",),
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
    if not batches:
        raise ValueError(
            f"awq needs calibration batches: at least {MIN_CALIBRATION_TOKENS} tokens "
            "(the paper uses 128 sequences of 512 tokens)"
        )
    target = model if inplace else copy.deepcopy(model)
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
    stats = _collect(target, targets, batches, search_tokens, seed)
    seen = min((stats.rows.get(n, 0) for n in targets), default=0)
    if seen < MIN_CALIBRATION_TOKENS:
        raise ValueError(
            f"too little calibration data: some layers saw {seen} tokens, AWQ needs at least {MIN_CALIBRATION_TOKENS} "
            "(the paper uses 128 sequences of 512 tokens, e.g. calibration_batches(tokenizer, n=128))"
        )
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
    groups = [g for g in groups if not tied.intersection(g.layers) and g.prev not in tied]
    # Inputs of the blocks that score norm-fed groups, recorded before any fold changes the model. A block
    # is replayed only while its input is still what was recorded: its group is searched before any other
    # group folds into the same producer, which holds because norm-fed groups come first.
    blocks = {g.inspect: target.get_submodule(g.inspect) for g in groups if g.inspect is not None}
    calls = capture_inputs(target, blocks, batches, search_tokens) if blocks else {}
    input_scale: dict[str, torch.Tensor] = {}
    alphas, inspected = {}, {}
    with torch.no_grad():
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
        clipped = []
        if clip:
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


def awq(
    model: nn.Module,
    calib_batches: Iterable[Any],
    bits: int = 4,
    group_size: int | None = 128,
    *,
    pairs: Sequence[Any] | None = None,
    clip: bool = True,
    skip: Sequence[str] = ("lm_head",),
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
