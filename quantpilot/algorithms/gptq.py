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

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..api import run_pipeline
from ..spec import PerChannel, PerGroup, QuantSpec
from .gptq_hessian import HessianAccumulator, HessianFactor, hessian_factor  # noqa: F401 (re-exported)
from .gptq_sequential import find_blocks, gptq_blocks, gptq_targets, spec_group  # noqa: F401 (re-exported)
from .rtn import DEFAULT_SKIP, _check_model, quantize_weight, weight_only_recipe

# Columns quantized one by one before their error reaches the rest of the block in one matmul.
_SUB_BLOCK = 16

__all__ = [
    "gptq",
    "gptq_quantize_weight",
    "hessian_factor",
    "HessianFactor",
    "gptq_blocks",
    "gptq_targets",
    "HessianAccumulator",
    "find_blocks",
]


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
    factor: HessianFactor | None = None,
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
        factor: `hessian_factor(hessian, damp, act_order)` when already computed (layers sharing an input,
            such as q/k/v, share it).

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
    group = _check_inputs(weight, hessian, spec, block_size, damp)
    column_spec = _column_spec(spec)
    if factor is None:
        factor = hessian_factor(hessian, damp, act_order)
    elif (factor.damp, factor.act_order) != (damp, act_order) or factor.u.shape != hessian.shape:
        raise ValueError("factor was computed with another damp, act_order or width: pass factor=None")
    perm = factor.perm
    w, scale, zero, have_grid = _initial_grids(weight, factor.dead, column_spec, group, act_order, scale_dtype)
    w = w[:, perm] if act_order else w
    codes = _column_sweep(w, factor.u, perm, scale, zero, have_grid, group, column_spec, block_size, scale_dtype)
    inverse = torch.argsort(perm)
    return codes[:, inverse], scale, zero


def _check_inputs(
    weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, block_size: int, damp: float
) -> int | None:
    """Validate `gptq_quantize_weight`'s arguments; the spec's group size (None for per channel)."""
    if weight.dim() != 2 or hessian.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(
            f"hessian must be (in_features, in_features) = {(weight.shape[-1],) * 2} for a weight of shape "
            f"{tuple(weight.shape)}, got {tuple(hessian.shape)}"
        )
    if block_size < 1 or not 0 <= damp < 1:
        raise ValueError(f"block_size must be >= 1 and damp in [0, 1), got {block_size} and {damp}")
    columns = weight.shape[1]
    group = spec.granularity.size if isinstance(spec.granularity, PerGroup) else None
    if group is not None and columns % group:
        raise ValueError(f"group_size={group} does not divide in_features={columns}")
    return group


def _initial_grids(
    weight: torch.Tensor,
    dead: torch.Tensor,
    column_spec: QuantSpec,
    group: int | None,
    act_order: bool,
    scale_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A float copy of the weight (dead inputs zeroed) and the grids fixed before the sweep.

    Returns (w, scale, zero, have_grid); groups whose grid waits for the sweep are False in have_grid.
    """
    rows, columns = weight.shape
    w = weight.detach().float().clone()
    # Inputs that never fire carry no information: their weights are set to zero, as the reference does.
    w[:, dead] = 0.0
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
    return w, scale, zero, have_grid


def _column_sweep(
    w: torch.Tensor,
    u: torch.Tensor,
    perm: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    have_grid: torch.Tensor,
    group: int | None,
    column_spec: QuantSpec,
    block_size: int,
    scale_dtype: torch.dtype,
) -> torch.Tensor:
    """The column loop over the permuted `w` (updated in place): codes in permuted column order.

    Grids still missing in `have_grid` are filled into `scale` / `zero` when the sweep reaches their group.
    """
    rows, columns = w.shape
    # Column-major work: each column (and each rank-1 update) is one contiguous row of these (measured ~2x).
    codes_t = torch.zeros(columns, rows, dtype=torch.uint8)
    qmin, qmax = float(column_spec.qmin), float(column_spec.qmax)
    threads = torch.get_num_threads()
    grids: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        w1 = w[:, i1:i2].T.contiguous()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        # The column loop is thousands of small (rows x <=block) ops: one thread runs them fastest (profiled:
        # 2 threads were 2-14x slower per column on a busy 2-core CPU, the fork/join costing more than the work).
        torch.set_num_threads(1)
        try:
            for j1 in range(0, i2 - i1, _SUB_BLOCK):
                j2 = min(j1 + _SUB_BLOCK, i2 - i1)
                for i in range(j1, j2):
                    col = int(perm[i1 + i])
                    g = 0 if group is None else col // group
                    if not have_grid[g]:
                        _fill_grid(w, w1, err1, u, u1, (i1, i2, j1, j2, i), g, group, scale, zero, column_spec,
                                   scale_dtype)  # fmt: skip
                        have_grid[g] = True
                    if g not in grids:
                        grids[g] = (scale[:, g].contiguous(), zero[:, g].contiguous())
                    s_col, z_col = grids[g]
                    # primitives.quantize / dequantize inlined (the same float32 operations, so the same codes):
                    # their argument checks cost more than the arithmetic on one column.
                    q = (w1[i] / s_col).round_().add_(z_col).clamp_(qmin, qmax)
                    codes_t[i1 + i] = q.to(torch.uint8)
                    e = (w1[i] - (q - z_col) * s_col) / u1[i, i]
                    w1[i + 1 : j2].addr_(u1[i, i + 1 : j2], e, alpha=-1.0)
                    err1[i] = e
                # Lazy updates twice over: the sub-block's error reaches the rest of the block in one small
                # matmul (column by column over the whole block moved ~4x the memory: 11008-row layers).
                w1[j2:].sub_(u1[j1:j2, j2:].T @ err1[j1:j2])
        finally:
            torch.set_num_threads(threads)
        # The lazy batch update: the whole block's error reaches the later columns in one matmul (in place:
        # a temporary and a subtraction over the rest of the weight cost 2 s of a 4096 x 11008 layer's 15).
        w[:, i2:].addmm_(err1.T, u[i1:i2, i2:], alpha=-1.0)
    return codes_t.T.contiguous()


def _fill_grid(w, w1, err1, u, u1, where, g, group, scale, zero, column_spec, scale_dtype) -> None:
    """Group `g`'s grid from its current (error-compensated) weights, when the sweep reaches column `i`.

    `where` = (i1, i2, j1, j2, i): the block, the sub-block (both relative to i1) and the column. Every
    pending lazy update is applied to the group's columns first, so the grid never depends on the block
    sizes (the reference reads stale columns there; with its 128 / 128 no group straddles a block).
    """
    i1, i2, j1, j2, i = where
    columns = w.shape[1]
    end = min(i1 + i + group, columns)
    in_block = torch.cat([w1[i:j2], w1[j2:] - u1[j1:i, j2:].T @ err1[j1:i]]).T
    beyond = w[:, i2:end] - err1[:i].T @ u[i1 : i1 + i, i2:end]
    ahead = torch.cat([in_block, beyond], dim=1)[:, :group]
    _, sc, zp = quantize_weight(ahead, column_spec, scale_dtype)
    scale[:, g], zero[:, g] = sc[:, 0], zp[:, 0]


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
