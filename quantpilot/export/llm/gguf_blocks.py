"""quantpilot codes as GGUF blocks (Q8_0, Q4_0, Q4_1, Q6_K): mapped exactly where the block format allows.

llama.cpp's legacy block types hold 32 weights per block with one fp16 scale `d` (and, for Q4_1, an
fp16 offset `m`):

| type | block value | quantpilot weights that map without requantization (groups a multiple of 32) |
|---|---|---|
| Q4_0 | `(q - 8) * d` | uint4 symmetric (zero point 8): exact, d = our fp16 scale |
| Q4_1 | `q * d + m` | uint4, any zero point: codes exact, `m = -z * s` rounded to fp16 |
| Q8_0 | `q * d`, int8 q | 4-bit codes: exact (`q = c - z`, `d = s`); int8 symmetric: codes exact, scale to fp16 |
| Q6_K | `d * sc_j * (q - 32)` | 6-bit, zero point 32, g16k, rows of 256k, scales `d * sc_j` (fp16 d): exact |

Q6_K (256-weight superblocks of 16 groups, `gguf_kquants`) is what llama.cpp's own 4-bit files keep
their token table and output head at; quantpilot's `quantize_embeddings(bits=6, group_size=16)`
builds its scales on that grid, so the table maps bit for bit. 6-bit codes off that grid (a width
not a multiple of 256, scales that are not `d * integer` per superblock) go to Q8_0 by default:
Q8_0 has one scale per 32 weights, so codes in groups of 16 are requantized there (measured on
Gaussian 256 x 512 weights at 6-bit g16: relative RMS error 5.3e-3 against quantpilot's weight,
whose own error against the float weight is 1.9e-2), while 6-bit codes in groups of 32k map to
Q8_0 exactly (`q = c - 32`). The gguf package has no Q6_K quantizer, so asking Q6_K for any
other weight is a ValueError rather than a silent requantization.

Q4_1's offset `-z * s` needs up to 15 significant bits and fp16 has 11, so it is rounded: the
added error is at most half an fp16 ulp of `m` (|m| <= 15 s), under 0.4 % of a quantization step
(measured on random g128 weights: relative RMS error 5e-4, against 7e-2 when requantizing to Q4_0). A
weight the table does not cover (groups of 128 asked as Q4_0 when asymmetric, 8-bit codes as Q4_x,
groups not a multiple of 32, float weights) is requantized from quantpilot's dequantized weight by
the `gguf` package's own quantizer, and the caller is told (`Encoded.exact` False) with the error.

Example:
    >>> import torch
    >>> from quantpilot.export.llm.weights import LMTensor
    >>> codes = torch.randint(0, 16, (2, 64), dtype=torch.uint8)
    >>> t = LMTensor(((codes.float() - 8) * 0.5), codes, torch.full((2, 2), 0.5), torch.full((2, 2), 8.0), 4, 32)
    >>> e = encode(t, "q4_0"); e.mapping, e.max_abs_error
    ('exact', 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .gguf_kquants import q6_k_blocks, q6_k_misfit
from .weights import LMTensor

__all__ = ["GGUF_TYPES", "Encoded", "encode", "ggml_type"]

GGUF_TYPES = ("q8_0", "q4_0", "q4_1", "q6_k")
_BLOCK = 32


def ggml_type(name: str):
    """The `gguf.GGMLQuantizationType` of a type name ('q4_0', 'f16', ...).

    Example:
        >>> ggml_type("q4_1").name
        'Q4_1'
    """
    import gguf

    return gguf.GGMLQuantizationType[name.upper()]


@dataclass(frozen=True)
class Encoded:
    """GGUF bytes of one weight and what the encoding changed against quantpilot's dequantized weight.

    `mapping` is 'exact', 'codes exact, fp16 offset' / 'codes exact, fp16 scale' (codes kept, one
    qparam rounded to fp16) or 'requantized' (the gguf package's quantizer ran on our weight).

    Example:
        >>> Encoded(np.zeros((1, 18), np.uint8), "Q4_0", "exact", 0.0, 0.0).exact
        True
    """

    data: np.ndarray
    ggml_type: str
    mapping: str
    max_abs_error: float
    relative_rms_error: float

    @property
    def exact(self) -> bool:
        """True when the codes were kept (only an fp16 rounding of an offset or scale, if anything)."""
        return self.mapping != "requantized"


def _per_block(qparam: torch.Tensor, group: int) -> np.ndarray:
    """(rows, groups) -> (rows * cols / 32, 1): one value per 32-weight block."""
    return np.repeat(qparam.numpy().astype(np.float32), group // _BLOCK, axis=1).reshape(-1, 1)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """(blocks, 32) codes 0..15 -> (blocks, 16) bytes: weights 0..15 in the low nibbles, 16..31 in the high."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def _mapped_blocks(t: LMTensor, kind: str) -> tuple[np.ndarray, str] | None:
    """The blocks built from the codes themselves, or None when `kind` cannot hold them unchanged."""
    if t.codes is None or t.group_size % _BLOCK or t.codes.shape[1] % _BLOCK:
        return None
    rows, cols = t.codes.shape
    codes = t.codes.numpy().astype(np.int32).reshape(-1, _BLOCK)
    s, z = _per_block(t.scale, t.group_size), _per_block(t.zero_point, t.group_size)
    if kind == "q4_0" and t.bits == 4 and not t.signed and t.symmetric:
        return np.concatenate([_f16(s), _nibbles(codes)], axis=1), "exact"
    if kind == "q4_1" and t.bits == 4 and not t.signed:
        return np.concatenate([_f16(s), _f16(-z * s), _nibbles(codes)], axis=1), "codes exact, fp16 offset"
    if kind == "q8_0":
        q = codes - z.astype(np.int32)
        if q.min() < -128 or q.max() > 127:
            return None  # 8-bit asymmetric codes leave int8 after subtracting the zero point
        fp16_scale = bool((s.astype(np.float16).astype(np.float32) == s).all())
        mapping = "exact" if fp16_scale else "codes exact, fp16 scale"
        return np.concatenate([_f16(s), q.astype(np.int8).view(np.uint8)], axis=1), mapping
    return None


def encode(t: LMTensor, kind: str) -> Encoded:
    """The GGUF bytes (rows, bytes per row) of a 2-D weight as `kind` (q8_0, q4_0, q4_1, q6_k, f16, f32).

    Codes are mapped as the module docstring's table says; otherwise the weight is requantized with
    `gguf.quants.quantize`. Either way the bytes are dequantized back with `gguf.quants.dequantize`
    and compared with quantpilot's weight, so the error reported is the one llama.cpp will see.

    Example:
        >>> e = encode(LMTensor(torch.ones(2, 32)), "q8_0"); e.ggml_type, e.mapping, e.data.shape
        ('Q8_0', 'requantized', (2, 34))
    """
    import gguf

    if kind not in GGUF_TYPES + ("f16", "f32"):
        raise ValueError(f"gguf_type must be one of {', '.join(GGUF_TYPES)} (or f16/f32 for float), got {kind!r}")
    qtype = ggml_type(kind)
    value = t.value.float().numpy()
    rows = value.shape[0]
    if kind == "q6_k":
        blocks = q6_k_blocks(t)
        if blocks is None:
            raise ValueError(
                "q6_k takes 6-bit codes from quantize_embeddings(bits=6, group_size=16, superblock=256) on widths "
                f"of 256k (the gguf package cannot requantize to Q6_K); got {q6_k_misfit(t)}; leave the type unset "
                "to give each tensor the type its codes fit"
            )
        mapped = blocks, "exact"
    else:
        mapped = None if kind in ("f16", "f32") else _mapped_blocks(t, kind)
    if mapped is not None:
        data, mapping = mapped[0].reshape(rows, -1), mapped[1]
    elif kind in ("f16", "f32"):
        data, mapping = value.astype(np.float16 if kind == "f16" else np.float32), "exact" if kind == "f32" else "f16"
    else:
        data, mapping = gguf.quants.quantize(value, qtype), "requantized"
    back = gguf.quants.dequantize(data, qtype) if kind not in ("f16", "f32") else data.astype(np.float32)
    diff = back.reshape(value.shape) - value
    rms = float(np.sqrt((diff**2).mean()) / max(np.sqrt((value**2).mean()), 1e-30))
    return Encoded(data, qtype.name, mapping, float(np.abs(diff).max()) if diff.size else 0.0, rms)
