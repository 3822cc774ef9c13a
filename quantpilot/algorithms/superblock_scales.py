"""Symmetric group codes whose scales are small integer multiples of one step per superblock.

llama.cpp's k-quants store a weight in superblocks of 256 values: each group of 16 (Q6_K) has its own
scale, itself quantized as an 8-bit integer times one fp16 number `d` for the whole superblock
(`value = d * sc_j * (q - 32)` for Q6_K). quantpilot's packed layers store one fp16 scale per group,
so a table whose codes must reach llama.cpp unchanged needs scales that are already on that grid:
`d * sc_j` with `sc_j` in 1..127 and `d` an fp16 number. Keeping `d` to 4 significant bits makes every
product `d * sc_j` (4 + 7 bits) an fp16 number too, so quantpilot's own model, its saved file and the
GGUF block all hold the same values bit for bit.

The group scales start from the min/max grid (`amax / 31.5` for 6-bit codes, as `quantize_weight`);
`d` is rounded up, so the largest group keeps its range and the others round to the nearest multiple
(at most half a step of `d`, 1/254 of the superblock's largest scale, away from their own).

Example:
    >>> import torch
    >>> from quantpilot.nn.packed import weight_only_spec
    >>> codes, scale, zero = quantize_on_superblock_grid(torch.randn(2, 256), weight_only_spec(6, 16, True), 256)
    >>> codes.shape, scale.shape, bool((scale.half().float() == scale).all()), zero.unique().tolist()
    (torch.Size([2, 256]), torch.Size([2, 16]), True, [32.0])
"""

from __future__ import annotations

import torch

from ..primitives import choose_qparams, min_max, quantize
from ..spec import PerGroup, QuantSpec

__all__ = ["quantize_on_superblock_grid", "SCALE_MULTIPLES"]

SCALE_MULTIPLES = 127  # the largest group scale, in steps of d (Q6_K's int8 scales, positive)
_STEP_BITS = 4  # significant bits of d: 4 + 7 (the multiple) fit fp16's 11


def _round_up_to_bits(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The smallest fp16 number >= x (> 0) with at most `bits` significant bits.

    Below fp16's normal range its numbers are multiples of 2**-24, which the unit never goes under: a
    step that is such a multiple with `bits` significant bits keeps `step * k` (k < 128) an fp16 number.
    """
    _, exponent = torch.frexp(x)
    unit = torch.ldexp(torch.ones_like(x), exponent - bits).clamp(min=2.0**-24)
    return torch.ceil(x / unit) * unit


def _check(weight: torch.Tensor, spec: QuantSpec, superblock: int) -> int:
    g = spec.granularity
    if not isinstance(g, PerGroup) or not spec.symmetric:
        raise ValueError(f"superblock scales take a symmetric per-group spec (as Q6_K), got {spec}")
    if superblock % g.size or superblock <= g.size:
        raise ValueError(f"superblock={superblock} must be a multiple of group_size={g.size} (Q6_K: 256 and 16)")
    if weight.dim() != 2 or weight.shape[1] % superblock:
        raise ValueError(
            f"a weight of shape {tuple(weight.shape)} does not split into superblocks of {superblock} columns; "
            "use superblock=None for tables whose width is not a multiple of it"
        )
    return g.size


def quantize_on_superblock_grid(
    weight: torch.Tensor, spec: QuantSpec, superblock: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest codes of a (rows, cols) weight with group scales on a per-superblock fp16 grid.

    Args:
        weight: float (rows, cols), cols a multiple of `superblock`.
        spec: a symmetric per-group `weight_only_spec` (6-bit, groups of 16 for Q6_K).
        superblock: columns sharing one scale step `d` (llama.cpp: 256).

    Returns:
        (codes uint8 (rows, cols), scale (rows, groups) float32 holding fp16 numbers equal to
        `d * k` with k in 1..127, zero_point (rows, groups) float32, the middle code).

    Raises:
        ValueError: the spec is not symmetric per group, or the shape does not split into superblocks.

    Example:
        >>> from quantpilot.nn.packed import weight_only_spec
        >>> _, s, _ = quantize_on_superblock_grid(torch.randn(1, 512), weight_only_spec(6, 16, True), 256)
        >>> d = s.reshape(2, 16).amax(1, keepdim=True) / 127  # the largest group sets the step
        >>> bool(((s.reshape(2, 16) / _round_up_to_bits(d, 4)) % 1 == 0).all())
        True
    """
    group = _check(weight, spec, superblock)
    w = weight.detach().float()
    rows, cols = w.shape
    mn, mx = min_max(w, spec)
    scale, zero_point = choose_qparams(mn, mx, spec)
    by_block = scale.reshape(rows, cols // superblock, superblock // group)
    top = by_block.amax(-1, keepdim=True)
    # An all-zero superblock takes any step (its codes are the zero point): the smallest fp16 number.
    step = _round_up_to_bits(torch.clamp(top / SCALE_MULTIPLES, min=2.0**-24), _STEP_BITS)
    multiples = torch.round(by_block / step).clamp(1, SCALE_MULTIPLES)
    on_grid = (multiples * step).reshape(scale.shape)
    if not bool((on_grid.half().float() == on_grid).all()):  # only past fp16's largest number (65504)
        raise ValueError("the weight's scales exceed fp16's range; keep this table at 8 bits")
    codes = quantize(w, on_grid, zero_point, spec)
    shape = (rows, -1)
    return codes, on_grid.reshape(shape), zero_point.float().reshape(shape)
