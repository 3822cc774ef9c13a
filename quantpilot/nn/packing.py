"""4-bit codes two per byte: the byte layout every packed weight in quantpilot uses.

`pack_int4` / `unpack_int4` pack unsigned codes (0..15) along the last axis. `pack_codes` /
`unpack_codes` store any int4 / uint4 tensor (a Linear's or a convolution's weight codes) as one
flat byte vector: signed codes are shifted by +8 into 0..15 first, and an odd count gets one
padding nibble, so a 3x3 kernel costs 4.5 bits per code at worst instead of 8.

Example:
    >>> import torch
    >>> codes = torch.randint(0, 16, (4, 8), dtype=torch.uint8)
    >>> torch.equal(unpack_int4(pack_int4(codes)), codes), pack_int4(codes).shape
    (True, torch.Size([4, 4]))
"""

from __future__ import annotations

import math

import torch

from ..spec import QuantSpec

__all__ = ["pack_int4", "unpack_int4", "pack_codes", "unpack_codes", "is_packed"]


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (0..15) two per byte along the last axis: column 2j in the low nibble, 2j+1 high.

    Args:
        codes: integer tensor with values in 0..15 and an even last dimension.

    Returns:
        uint8 tensor with the last dimension halved.

    Example:
        >>> pack_int4(torch.tensor([[1, 2, 15, 0]])).tolist()
        [[33, 15]]
    """
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise TypeError(f"pack_int4 packs integer codes, got {codes.dtype}")
    if codes.dim() == 0 or codes.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even last dimension, got shape {tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ValueError("pack_int4 takes codes in 0..15 (unsigned 4-bit); shift signed int4 codes by +8 first")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: uint8 bytes to codes 0..15, last dimension doubled.

    Example:
        >>> unpack_int4(torch.tensor([[33, 15]], dtype=torch.uint8)).tolist()
        [[1, 2, 15, 0]]
    """
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 takes the uint8 bytes pack_int4 returns, got {packed.dtype}")
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def is_packed(spec: QuantSpec | None) -> bool:
    """True when weights of this spec are stored two codes per byte (int4 / uint4).

    Example:
        >>> is_packed(QuantSpec("int4")), is_packed(QuantSpec("int8")), is_packed(None)
        (True, False, False)
    """
    return spec is not None and spec.dtype.bits == 4


def packed_numel(shape: tuple[int, ...] | torch.Size) -> int:
    """Bytes `pack_codes` stores for codes of `shape` (two per byte, rounded up).

    Example:
        >>> packed_numel((3, 3))
        5
    """
    return (math.prod(shape) + 1) // 2


def pack_codes(codes: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """int4 / uint4 codes of any shape as a flat uint8 vector, two per byte (`unpack_codes` inverts it).

    Example:
        >>> pack_codes(torch.tensor([[-8, 7, 0]], dtype=torch.int8), QuantSpec("int4")).tolist()
        [240, 8]
    """
    if not is_packed(spec):
        raise ValueError(f"only 4-bit codes are packed, got a {spec.dtype.value} spec")
    flat = codes.reshape(-1).to(torch.int16)
    if spec.dtype.is_signed:
        flat = flat + 8  # -8..7 -> 0..15: pack_int4 stores unsigned nibbles
    if flat.numel() % 2:
        flat = torch.cat((flat, flat.new_zeros(1)))
    return pack_int4(flat)


def unpack_codes(packed: torch.Tensor, spec: QuantSpec, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The codes `pack_codes` stored, in `shape` and the spec's storage dtype (int8 / uint8).

    Example:
        >>> spec = QuantSpec("int4")
        >>> unpack_codes(pack_codes(torch.tensor([[-8, 7, 0]]), spec), spec, (1, 3)).tolist()
        [[-8, 7, 0]]
    """
    if packed.numel() != packed_numel(shape):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold codes shaped {tuple(shape)}")
    flat = unpack_int4(packed.reshape(-1))[: math.prod(shape)]
    if spec.dtype.is_signed:
        return (flat.to(torch.int8) - 8).reshape(shape)
    return flat.reshape(shape)
