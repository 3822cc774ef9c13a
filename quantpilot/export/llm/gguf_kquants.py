"""quantpilot's 6-bit codes as llama.cpp `block_q6_K` superblocks, bit for bit.

A Q6_K superblock holds 256 weights of one row: 16 groups of 16 with an int8 scale `sc_j` each and
one fp16 `d`, the value being `d * sc_j * (q - 32)` with q in 0..63. quantpilot's 6-bit codes
(`quantize_embeddings(bits=6, group_size=16)`: unsigned, zero point 32) are the same numbers when,
in every 256-column superblock, each group's fp32 scale is `d * sc_j` with `d` fp16 and `sc_j` an
integer in 0..127; the quantizer builds its scales that way, and this module finds `d` and `sc_j`
back from the scales alone (no float is rounded: anything that does not decompose exactly is
refused, and the caller falls back to another type).

Byte layout (ggml's `block_q6_K`, 210 bytes): `ql[128]` the low 4 bits, `qh[64]` the high 2 bits,
`scales[16]` int8, `d` fp16. Within each half of 128 weights, `ql[l]` holds weight l (low nibble)
and weight l + 64 (high nibble), and `qh[l]` holds the high bits of weights l, l + 32, l + 64,
l + 96 at bit offsets 0, 2, 4, 6.

Example:
    >>> import torch
    >>> from quantpilot.export.llm.weights import LMTensor
    >>> codes = torch.randint(0, 64, (1, 256), dtype=torch.uint8)
    >>> scale = torch.arange(1.0, 17.0).reshape(1, 16) * 0.25
    >>> value = (codes.float() - 32) * scale.repeat_interleave(16, dim=1)
    >>> q6_k_blocks(LMTensor(value, codes, scale, torch.full((1, 16), 32.0), 6, 16)).shape
    (1, 210)
"""

from __future__ import annotations

import numpy as np

from .weights import LMTensor

__all__ = ["Q6_K_BYTES", "QK_K", "q6_k_blocks", "q6_k_misfit", "q6_k_scales"]

QK_K = 256  # weights per superblock
Q6_K_BYTES = QK_K // 2 + QK_K // 4 + QK_K // 16 + 2  # ql, qh, int8 scales, fp16 d: 210


def _layout_misfit(t: LMTensor) -> str | None:
    """Why `t` cannot be Q6_K before any scale is read (6-bit unsigned, zero point 32, g16k, rows of 256k), or None."""
    if t.codes is None:
        return "a float weight"
    if t.bits != 6 or t.signed or t.codes.dim() != 2:
        return f"{'int' if t.signed else 'uint'}{t.bits} codes (Q6_K holds unsigned 6-bit codes)"
    if t.group_size <= 0 or t.group_size % 16:
        return f"groups of {t.group_size} (Q6_K needs a multiple of 16)"
    if t.codes.shape[1] % QK_K or t.codes.numel() == 0:
        return f"{t.codes.shape[1]} columns (Q6_K needs a multiple of 256)"
    if not bool((t.zero_point == 32).all()) or int(t.codes.max()) > 63:
        return "zero points other than 32 or codes above 63"
    return None


def q6_k_misfit(t: LMTensor) -> str | None:
    """None when `t` maps to Q6_K exactly, else a few words saying why not (for error messages).

    Example:
        >>> import torch
        >>> q6_k_misfit(LMTensor(torch.zeros(1, 256)))
        'a float weight'
    """
    why = _layout_misfit(t)
    if why is None and q6_k_scales(t) is None:
        why = "scales that are not fp16 d * integer 0..127 within each 256-column superblock"
    return why


def _decompose(s: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(superblocks, 16) fp32 scales -> (d fp16 (superblocks,), sc int8 (superblocks, 16)), or None.

    Tries k = 127..1 with d = max(s) / k (the quantizer's largest sc_j is usually near 127, so most
    superblocks settle in the first tries); k is accepted when d is fp16 and `d * rint(s / d)` gives
    every scale back exactly in fp32, which is the product llama.cpp's dequantizer computes.
    """
    if not np.isfinite(s).all() or (s < 0).any():
        return None
    n = s.shape[0]
    d = np.zeros(n, np.float32)
    sc = np.zeros((n, 16), np.float32)
    s_max = s.max(axis=1)
    todo = np.flatnonzero(s_max > 0)  # an all-zero superblock is d = 0, sc = 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k in range(127, 0, -1):
            if todo.size == 0:
                break
            cand = (s_max[todo] / np.float32(k)).astype(np.float32)
            half = cand.astype(np.float16)
            ints = np.rint(s[todo] / cand[:, None])
            ok = (half.astype(np.float32) == cand) & np.isfinite(half) & (cand > 0)
            ok &= ((ints >= 0) & (ints <= 127) & (ints * cand[:, None] == s[todo])).all(axis=1)
            d[todo[ok]], sc[todo[ok]] = cand[ok], ints[ok]
            todo = todo[~ok]
    if todo.size:
        return None
    return d.astype(np.float16), sc.astype(np.int8)


def q6_k_scales(t: LMTensor) -> tuple[np.ndarray, np.ndarray] | None:
    """Each superblock's fp16 `d` and int8 `sc_j` when `t` maps to Q6_K exactly, else None.

    Example:
        >>> import torch
        >>> q6_k_scales(LMTensor(torch.zeros(1, 256))) is None  # a float tensor has no codes to keep
        True
    """
    if _layout_misfit(t) is not None:
        return None
    per16 = np.repeat(t.scale.float().numpy().astype(np.float32), t.group_size // 16, axis=1)
    return _decompose(per16.reshape(-1, QK_K // 16))


def _pack(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(superblocks, 256) codes 0..63 -> ql (superblocks, 128) and qh (superblocks, 64) as ggml lays them out."""
    n = q.shape[0]
    low = (q & 0x0F).reshape(n, 2, 2, 64)  # half, nibble (weights l / l + 64), l
    ql = low[:, :, 0] | (low[:, :, 1] << 4)
    high = (q >> 4).reshape(n, 2, 4, 32)  # half, 2-bit slot (weights l, l + 32, l + 64, l + 96), l
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    return ql.reshape(n, 128), qh.reshape(n, 64)


def q6_k_blocks(t: LMTensor) -> np.ndarray | None:
    """The (rows, cols / 256 * 210) Q6_K bytes of a 6-bit tensor on the superblock grid, or None.

    Example:
        >>> import torch
        >>> q6_k_blocks(LMTensor(torch.zeros(2, 128))) is None
        True
    """
    scales = q6_k_scales(t)
    if scales is None:
        return None
    d, sc = scales
    rows = t.codes.shape[0]
    ql, qh = _pack(t.codes.numpy().astype(np.uint8).reshape(-1, QK_K))
    data = np.concatenate([ql, qh, sc.view(np.uint8), d.reshape(-1, 1).view(np.uint8)], axis=1)
    return data.reshape(rows, -1)
