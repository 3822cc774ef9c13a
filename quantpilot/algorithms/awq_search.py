"""AWQ's searches: the layer groups that share one scale vector, the per-group scale (alpha) search and the
per-channel clip search (`quantpilot.algorithms.awq` re-exports the public names).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn

from ..batches import call_model, eval_mode
from ..nn.registry import is_linear
from ..primitives import choose_qparams, dequantize, min_max, quantize
from ..recipe import OUTPUT_HEADS
from ..spec import PerGroup, QuantSpec
from ..surgery import observe
from .awq_blocks import Call, block_error, inspected_module

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


def _is_linear(module: nn.Module) -> bool:
    return is_linear(module)  # the registry's one decision, subclasses included


def _is_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return "norm" in type(module).__name__.lower() and isinstance(weight, torch.Tensor) and weight.dim() == 1


def _weight(module: nn.Module) -> torch.Tensor:
    """The weight as an (out, in) view sharing memory: a Linear's own, or a GPT-2 Conv1D's transpose."""
    return module.weight.data if isinstance(module, nn.Linear) else module.weight.data.t()


def _fake_quant(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    # dequantize(quantize(...)) is fake_quantize's value bit for bit without its autograd Function, which keeps
    # the straight-through masks of every call: the searches run ~100 of these on whole weights per block.
    scale, zero_point = choose_qparams(*min_max(w, spec), spec)
    return dequantize(quantize(w, scale, zero_point, spec), scale, zero_point, spec, w.dtype)


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
    norms = {n: m for n, m in model.named_modules() if _is_norm(m)}
    norm_outputs: dict[int, tuple[str, torch.Tensor]] = {}

    def on_norm(name: str, _args: tuple, _kwargs: dict, output: Any) -> None:
        if stats.batch_index == 0 and isinstance(output, torch.Tensor):
            # Keep the tensor referenced so its id cannot be reused by another tensor during the pass.
            norm_outputs[id(output)] = (name, output)

    def on_linear(name: str, args: tuple, _kwargs: dict) -> None:
        x = args[0]
        if stats.batch_index == 0 and id(x) in norm_outputs and norm_outputs[id(x)][1] is x:
            stats.producer[name] = norm_outputs[id(x)][0]
        stats.record(name, x)

    def on_module(name: str, args: tuple, kwargs: dict) -> None:
        if stats.batch_index != 0:
            return
        for x in (*args, *kwargs.values()):
            if isinstance(x, torch.Tensor) and id(x) in norm_outputs and norm_outputs[id(x)][1] is x:
                stats.receivers.setdefault(norm_outputs[id(x)][0], []).append(name)
                return

    others = {n: m for n, m in model.named_modules() if n and n not in norms and n not in targets}
    with (
        observe(model, norms, after=on_norm),
        observe(model, targets, before=on_linear),
        observe(model, others, before=on_module),
        eval_mode(model),
        torch.no_grad(),
    ):
        for index, batch in enumerate(batches):
            stats.batch_index = index
            call_model(model, batch)
            norm_outputs.clear()
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


def find_scale_groups(model: nn.Module, example_batch: Any, *, skip: Sequence[str] = OUTPUT_HEADS) -> list[ScaleGroup]:
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
            group = ScaleGroup(
                item["prev"], tuple(item["layers"]), None if rows is None else tuple(rows), item.get("inspect")
            )
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


def _search_scale_in_block(
    block: nn.Module, layers: list[nn.Module], calls: list[Call], x_mean: torch.Tensor, spec: QuantSpec
):
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
    # The reference's error, mean over tokens of (x_g . (q - w)_g)^2, is d^T G_g d with G_g = X_g^T X_g / tokens:
    # every shrink is scored from (size x size) Gram matrices instead of a (groups, tokens, out) product and its
    # difference to the float one (a 1B block's clip search: ~4x fewer flops, no token-sized temporaries).
    gram = torch.bmm(xg.transpose(1, 2), xg) / xg.shape[1]  # (groups, size, size)
    wg = w.reshape(out_ch, groups, size)
    org_max = wg.abs().amax(dim=-1, keepdim=True)
    best_max, best_err = org_max.clone(), torch.full_like(org_max, math.inf)
    for i in range(int(CLIP_MAX_SHRINK * CLIP_GRID)):
        max_val = org_max * (1 - i / CLIP_GRID)
        q = _fake_quant(torch.clamp(wg, -max_val, max_val).reshape(out_ch, width), spec).reshape(out_ch, groups, size)
        d = (q - wg).transpose(0, 1)  # (groups, out, size)
        err = (torch.bmm(d, gram) * d).sum(dim=-1).t().unsqueeze(-1)  # (out, groups, 1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, max_val, best_max)
    return best_max
