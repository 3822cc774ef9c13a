"""GPTQ (Frantar et al., 2022): weight-only quantization with second-order error feedback.

For each Linear layer with calibration inputs X (tokens x in_features) GPTQ minimises
||W X^T - Q X^T||^2 one input column at a time. With the Hessian H = 2 X^T X / n, dampened by 1 %
of its mean diagonal, and U the upper Cholesky factor of H^-1:

    q_j   = quant(w_j)                          (on the current group's min/max grid)
    e_j   = (w_j - q_j) / U[j, j]
    w_k  -= e_j * U[j, k]     for k > j         (the OBS update, here in Cholesky form)

Columns are processed in blocks of 128: inside a block the update is applied column by column,
to the remaining columns beyond the block once per block ("lazy batch updates"); the result is
the same as updating everything after every column. Options follow the reference code
(IST-DASLab/gptq): `act_order` visits columns by decreasing Hessian diagonal; groups of
`group_size` columns get their grid when the algorithm reaches the group (with act_order the
grids are fixed up front from the float weight, the reference's `static_groups`, so groups stay
contiguous and the packed kernels apply). Blocks of a transformer are quantized in order, each
one's Hessians taken from the outputs of the already quantized blocks before it.

Example:
    >>> import torch
    >>> from quantpilot.nn.packed import weight_only_spec
    >>> x = torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    >>> w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    >>> codes, s, z = gptq_quantize_weight(w, 2 * x.T @ x / 256, weight_only_spec(4, 32))
    >>> codes.shape, s.shape
    (torch.Size([8, 64]), torch.Size([8, 2]))
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..batches import eval_mode
from ..install import replace_module
from ..nn.packed import WeightOnlyLinear
from ..primitives import dequantize, quantize
from ..spec import PerChannel, PerGroup, QuantSpec
from .rtn import DEFAULT_SKIP, _check_model, linear_weight, quantize_weight, run_pipeline, weight_only_recipe

__all__ = ["gptq", "gptq_quantize_weight", "gptq_blocks", "gptq_targets", "HessianAccumulator", "find_blocks"]


class HessianAccumulator:
    """Running `H = 2 X^T X / n` over the rows (tokens) of a layer's inputs, in float32.

    Example:
        >>> acc = HessianAccumulator(2)
        >>> acc.add(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
        >>> acc.hessian.tolist(), acc.tokens
        ([[2.0, 2.0], [2.0, 4.0]], 2)
    """

    def __init__(self, columns: int) -> None:
        self.hessian = torch.zeros(columns, columns)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """Fold a batch of inputs (any leading shape, last dimension = columns) into the average."""
        x = x.detach().reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        if n == 0:
            return
        total = self.tokens + n
        # Running mean, as the reference: old sum rescaled, the new rows added with weight 2 / total.
        self.hessian.mul_(self.tokens / total).addmm_(x.T, x, alpha=2.0 / total)
        self.tokens = total


def _column_spec(spec: QuantSpec) -> QuantSpec:
    # One column of codes is quantized with per-row (output channel) qparams.
    return QuantSpec(spec.dtype, symmetric=spec.symmetric, granularity=PerChannel(0))


def gptq_quantize_weight(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: QuantSpec,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    scale_dtype: torch.dtype = torch.float16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ one layer: codes and qparams minimising the output error under the input Hessian.

    Args:
        weight: float (out_features, in_features).
        hessian: (in_features, in_features), e.g. `HessianAccumulator.hessian`.
        spec: a `weight_only_spec` (PerGroup or PerChannel(0)).
        block_size: columns per lazy-update block (128 in the paper).
        damp: fraction of the mean Hessian diagonal added to the diagonal (0.01 in the paper).
        act_order: visit columns by decreasing Hessian diagonal (grids fixed up front when grouped).
        scale_dtype: storage dtype of scales and zero points (the grid is rounded to it first).

    Returns:
        (codes uint8 (out, in), scale (out, groups), zero_point (out, groups)), as `rtn.quantize_weight`.

    Raises:
        ValueError: shapes disagree, or the dampened Hessian is not positive definite.

    Example:
        >>> from quantpilot.nn.packed import weight_only_spec
        >>> w = torch.tensor([[0.3, -0.7, 1.1, 0.05]])
        >>> codes, _, _ = gptq_quantize_weight(w, torch.eye(4), weight_only_spec(4, None))
        >>> codes.tolist()  # an identity Hessian has no cross terms: plain round to nearest
        [[9, 0, 15, 6]]
    """
    if weight.dim() != 2 or hessian.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(
            f"hessian must be (in_features, in_features) = {(weight.shape[-1],) * 2} for a weight of shape "
            f"{tuple(weight.shape)}, got {tuple(hessian.shape)}"
        )
    if block_size < 1 or not 0 <= damp < 1:
        raise ValueError(f"block_size must be >= 1 and damp in [0, 1), got {block_size} and {damp}")
    rows, columns = weight.shape
    group = spec.granularity.size if isinstance(spec.granularity, PerGroup) else None
    if group is not None and columns % group:
        raise ValueError(f"group_size={group} does not divide in_features={columns}")
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    # Inputs that never fire carry no information: their weights are set to zero, as the reference does.
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    column_spec = _column_spec(spec)
    groups = 1 if group is None else columns // group
    scale = torch.zeros(rows, groups)
    zero = torch.zeros(rows, groups)
    have_grid = torch.zeros(groups, dtype=torch.bool)
    if group is None or act_order:
        # Per channel: one grid from the whole (float) row; act-order groups: each grid from the float
        # weight before any update (the reference's static_groups), so groups stay contiguous.
        for g in range(groups):
            cols = slice(None) if group is None else slice(g * group, (g + 1) * group)
            _, s, z = quantize_weight(w[:, cols], column_spec, scale_dtype)
            scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
        have_grid[:] = True
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(columns)
    w, h = w[:, perm], h[perm][:, perm]
    h.diagonal().add_(damp * torch.diag(h).mean())
    try:
        # H^-1 = L^-T L^-1 from a triangular solve: the same matrix as torch.cholesky_inverse(L), which
        # measured ~50x slower on this CPU build (9 s vs 0.2 s at 1024 x 1024).
        lower_inv = torch.linalg.solve_triangular(torch.linalg.cholesky(h), torch.eye(columns), upper=False)
        u = torch.linalg.cholesky(lower_inv.T @ lower_inv, upper=True)
    except torch.linalg.LinAlgError:
        raise ValueError(
            "the dampened Hessian is not positive definite; pass more calibration data or a larger damp"
        ) from None
    codes = torch.zeros(rows, columns, dtype=torch.uint8)
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            g = 0 if group is None else col // group
            if not have_grid[g]:
                # The group's grid from its current (error-compensated) weights, when the sweep reaches it.
                # A group reaching past this block also gets the block's pending lazy update, so the
                # grid never depends on the block size (the reference reads the stale columns there;
                # with its default 128 / 128 no group straddles a block and both agree).
                end = min(i1 + i + group, columns)
                pending = err1[:, :i] @ u[i1 : i1 + i, i2:end]
                ahead = torch.cat([w1[:, i:], w[:, i2:end] - pending], dim=1)[:, :group]
                _, s, z = quantize_weight(ahead, column_spec, scale_dtype)
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
                have_grid[g] = True
            q = quantize(w1[:, i : i + 1], scale[:, g], zero[:, g], column_spec)
            codes[:, i1 + i] = q[:, 0]
            dq = dequantize(q, scale[:, g], zero[:, g], column_spec)[:, 0]
            e = (w1[:, i] - dq) / u1[i, i]
            w1[:, i:].sub_(e.unsqueeze(1) * u1[i, i:].unsqueeze(0))
            err1[:, i] = e
        # The lazy batch update: the whole block's error reaches the later columns in one matmul.
        w[:, i2:].sub_(err1 @ u[i1:i2, i2:])
    inverse = torch.argsort(perm)
    return codes[:, inverse], scale, zero


def find_blocks(model: nn.Module, targets: Iterable[str]) -> tuple[str, nn.ModuleList] | None:
    """The `nn.ModuleList` of repeated blocks (transformer layers) holding the most target layers.

    Example:
        >>> from quantpilot.testing import tiny_causal_lm
        >>> find_blocks(tiny_causal_lm("gpt2"), ["transformer.h.0.attn.c_attn"])[0]
        'transformer.h'
    """
    targets = list(targets)
    best, best_count = None, 0
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) == 0:
            continue
        prefix = f"{name}." if name else ""
        count = sum(t.startswith(prefix) for t in targets)
        if count > best_count:
            best, best_count = (name, m), count
    return best


class _InputsCaught(Exception):
    pass


def _run(model: nn.Module, batch: Any) -> Any:
    # No KV cache: a cache object captured with the block inputs would grow on every replay.
    extra = {"use_cache": False} if getattr(model, "config", None) is not None else {}
    if isinstance(batch, dict):
        return model(**batch, **extra)
    if isinstance(batch, tuple | list):
        return model(*batch, **extra)
    return model(batch, **extra)


def _first_block_inputs(model: nn.Module, block: nn.Module, batches: Sequence[Any]) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) each calibration batch passes to the first block (the model stops there)."""
    caught: list[tuple[tuple, dict]] = []

    def catch(_module, args, kwargs):
        caught.append((args, kwargs))
        raise _InputsCaught

    handle = block.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in batches:
            try:
                _run(model, batch)
            except _InputsCaught:
                pass
    finally:
        handle.remove()
    return caught


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _with_hidden(inputs: tuple[tuple, dict], hidden: torch.Tensor) -> tuple[tuple, dict]:
    args, kwargs = inputs
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _tokens(batch: Any) -> int:
    if isinstance(batch, dict):
        ids = batch.get("input_ids")
        if isinstance(ids, torch.Tensor):
            return ids.numel()
        tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
        return tensors[0].shape[:-1].numel() if tensors else 0
    t = batch[0] if isinstance(batch, tuple | list) else batch
    return t.numel() if t.dtype in (torch.long, torch.int) else t.shape[:-1].numel()


def gptq(
    model: nn.Module,
    calib_batches: Sequence[Any],
    bits: int = 4,
    group_size: int | None = 128,
    act_order: bool = False,
    *,
    symmetric: bool = False,
    block_size: int = 128,
    damp: float = 0.01,
    layers: Sequence[str] = ("*",),
    skip: Sequence[str] = DEFAULT_SKIP,
    blocks: str | None = None,
    scale_dtype: torch.dtype = torch.float16,
    inplace: bool = False,
) -> nn.Module:
    """GPTQ weight-only quantization of a causal LM, block by block, stored packed like `rtn`.

    A thin wrapper over the pipeline: `quantize` with a weight-only recipe whose steps hold
    `quantpilot.steps.GPTQ(...)`, `calibrate` on `calib_batches`, `freeze`. `qp.recipe_of(result)`
    returns that recipe; run through the same three calls it rebuilds this model bit for bit.

    Args:
        model: a float model whose Linear / Conv1D layers sit in a list of repeated blocks
            (`transformer.h`, `model.layers`, ...; found automatically or named by `blocks`).
        calib_batches: model inputs (dicts like `{"input_ids": ...}`), e.g.
            `quantpilot_testbed.language_model.calibration_batches(tokenizer, n=128)`.
        bits: 4 or 8.
        group_size: input columns per grid (128 default; 32 / 64 allowed) or None for per channel.
        act_order: quantize columns by decreasing Hessian diagonal (the paper's "act-order").
        symmetric: symmetric grids (the reference default is asymmetric).
        block_size: columns per lazy-update block.
        damp: Hessian dampening as a fraction of its mean diagonal.
        layers, skip: fnmatch patterns selecting the layers (the output head stays float by default).
        blocks: qualified name of the `nn.ModuleList` of blocks, when the automatic search fails.
        scale_dtype: torch.float16 or torch.bfloat16.
        inplace: change `model` itself instead of a copy.

    Returns:
        The quantized model (frozen; `quantpilot.save` / `load` round-trip it).

    Raises:
        ValueError: no repeated blocks, too few calibration tokens (at least as many as the widest
            layer's in_features), bad bits / group size.

    Example:
        >>> import torch, quantpilot as qp
        >>> from quantpilot.testing import tiny_causal_lm
        >>> data = [{"input_ids": torch.randint(0, 512, (1, 64))} for _ in range(4)]
        >>> q = qp.algorithms.gptq(tiny_causal_lm("llama"), data, bits=4, group_size=64)
        >>> type(q.model.layers[0].mlp.down_proj).__name__, [s.name for s in qp.recipe_of(q).steps]
        ('WeightOnlyLinear', ['gptq'])
    """
    from ..steps import GPTQ

    _check_model(model)
    if isinstance(calib_batches, torch.Tensor | dict) or not hasattr(calib_batches, "__len__"):
        raise TypeError("calib_batches must be a list of model inputs, e.g. [{'input_ids': tensor}, ...]")
    step = GPTQ(block_size=block_size, damp=damp, act_order=act_order, blocks=blocks)
    recipe = weight_only_recipe(bits, group_size, symmetric, layers, skip, scale_dtype, "gptq", (step,))
    return run_pipeline(model, recipe, calib_batches, inplace=inplace)


def gptq_targets(
    model: nn.Module, names: list[str], batches: Sequence[Any], group_size: int | None, blocks: str | None
) -> tuple[str, nn.ModuleList, dict[str, int]]:
    """Check what GPTQ needs and find the repeated blocks: `(blocks name, the ModuleList, {layer: in_features})`.

    Raises:
        ValueError: naming what to change (too few tokens, a group size that does not divide a
            layer, no blocks). Layers outside the blocks are named in a warning (they get RTN).

    Example:
        >>> from quantpilot.testing import tiny_causal_lm
        >>> lm = tiny_causal_lm("gpt2")
        >>> gptq_targets(lm, ["transformer.h.0.mlp.c_fc"], [{"input_ids": torch.zeros(1, 128, dtype=torch.long)}],
        ...              None, None)[0]
        'transformer.h'
    """
    if not names:
        raise ValueError("GPTQ found no Linear / Conv1D layer to quantize: check the recipe's layers and skip")
    widths = {n: linear_weight(model.get_submodule(n)).shape[1] for n in names}
    if group_size is not None:
        bad = [f"{n} (in_features={k})" for n, k in widths.items() if k % group_size]
        if bad:
            raise ValueError(f"group_size={group_size} does not divide the input width of {bad[:3]}")
    tokens = sum(_tokens(b) for b in batches)
    need = max(widths.values())
    if tokens < need:
        raise ValueError(
            f"GPTQ needs at least {need} calibration tokens (the widest layer's in_features, so that H = 2XᵀX "
            f"sees every input direction); got {tokens} in {len(batches)} batches. Pass more batches, e.g. "
            "calibration_batches(tokenizer, n=128, seq_len=256)"
        )
    if blocks is not None:
        found = (blocks, model.get_submodule(blocks))
        if not isinstance(found[1], nn.ModuleList):
            raise ValueError(f"blocks={blocks!r} names a {type(found[1]).__name__}, not an nn.ModuleList of blocks")
    else:
        found = find_blocks(model, names)
    if found is None:
        raise ValueError(
            f"found no nn.ModuleList of repeated blocks holding the layers {names[:3]}...; pass blocks='<name of the "
            "ModuleList>' (e.g. 'model.layers') or use quantpilot.algorithms.rtn"
        )
    block_list_name, block_list = found
    outside = [n for n in names if not n.startswith(f"{block_list_name}.")]
    if outside:
        # The recipe still quantizes them: the walker that follows gives them round-to-nearest codes.
        warnings.warn(
            f"GPTQ quantizes the layers inside {block_list_name!r}; {outside[:5]} lie outside it and get "
            "round-to-nearest weights (add them to the recipe's skip to keep them float)",
            stacklevel=4,
        )
    return block_list_name, block_list, widths


def gptq_blocks(
    model: nn.Module,
    batches: Sequence[Any],
    names: list[str],
    spec: QuantSpec,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    blocks: str | None = None,
    scale_dtype: torch.dtype = torch.float16,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """GPTQ's sequential pass over the float `model`: `{layer: (codes, scale, zero point)}`.

    Each block's Hessians come from the outputs of the blocks before it, already quantized: every
    layer is replaced, as soon as it is quantized, by a packed `WeightOnlyLinear` holding its codes.
    The float weights are read, never written.

    Example:
        >>> from quantpilot.testing import tiny_causal_lm
        >>> from quantpilot.nn.packed import weight_only_spec
        >>> lm = tiny_causal_lm("gpt2"); data = [{"input_ids": torch.randint(0, 512, (2, 64))}]
        >>> out = gptq_blocks(lm, data, ["transformer.h.0.mlp.c_fc"], weight_only_spec(4, 64))
        >>> out["transformer.h.0.mlp.c_fc"][0].dtype
        torch.uint8
    """
    block_list_name, block_list, widths = gptq_targets(model, names, batches, spec_group(spec), blocks)
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    with eval_mode(model), torch.no_grad():
        inputs = _first_block_inputs(model, block_list[0], batches)
        for index, block in enumerate(block_list):
            prefix = f"{block_list_name}.{index}."
            inside = {n[len(prefix) :]: n for n in names if n.startswith(prefix)}
            accumulators = {n: HessianAccumulator(widths[full]) for n, full in inside.items()}
            hooks = [
                block.get_submodule(n).register_forward_hook(lambda _m, args, _out, acc=acc: acc.add(args[0]))
                for n, acc in accumulators.items()
            ]
            try:
                for args, kwargs in inputs:
                    block(*args, **kwargs)
            finally:
                for handle in hooks:
                    handle.remove()
            for short, full in inside.items():
                module = block.get_submodule(short)
                result = gptq_quantize_weight(
                    linear_weight(module),
                    accumulators[short].hessian,
                    spec,
                    block_size=block_size,
                    damp=damp,
                    act_order=act_order,
                    scale_dtype=scale_dtype,
                )
                quantized[full] = result
                # The next blocks must see this layer quantized. A packed layer takes its place instead of
                # the dequantized values being written into the float weight: the float tensors are only
                # read, so `quantize` can share them with the user's model instead of copying them.
                codes, scale, zero = result
                bias = getattr(module, "bias", None)
                packed = WeightOnlyLinear.from_codes(codes, scale, zero, spec, bias, scale_dtype)
                packed.float_dtype = linear_weight(module).dtype
                packed.train(module.training)
                replace_module(block, short, packed)
            # The next block sees what this quantized block outputs, as in the paper's sequential scheme.
            inputs = [_with_hidden(inp, _hidden(block(*inp[0], **inp[1]))) for inp in inputs]
    return quantized


def spec_group(spec: QuantSpec) -> int | None:
    """The group size of a weight spec, None for per-channel.

    Example:
        >>> from quantpilot.nn.packed import weight_only_spec
        >>> spec_group(weight_only_spec(4, 64)), spec_group(weight_only_spec(8, None))
        (64, None)
    """
    return spec.granularity.size if isinstance(spec.granularity, PerGroup) else None
