"""How a quantization scheme is described: number format, mapping and granularity.

`QuantSpec` is the one description every other layer reads. It is a frozen dataclass so a
spec can be shared, hashed and serialised; strings work wherever the enum does.

Example:
    >>> from quantpilot.spec import QuantSpec, PerChannel
    >>> spec = QuantSpec(dtype="int8", symmetric=True, granularity=PerChannel(axis=0))
    >>> spec.qmin, spec.qmax
    (-128, 127)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

__all__ = [
    "QuantDtype",
    "PerTensor",
    "PerChannel",
    "PerGroup",
    "PerToken",
    "Granularity",
    "QuantSpec",
]


class QuantDtype(str, Enum):
    """Number formats quantpilot can quantize to.

    Example:
        >>> QuantDtype("int4").bits
        4
    """

    INT8 = "int8"
    UINT8 = "uint8"
    INT4 = "int4"
    UINT4 = "uint4"
    # 6-bit codes (stored one per byte): the token tables llama.cpp keeps at Q6_K (`quantize_embeddings`).
    UINT6 = "uint6"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"

    @property
    def bits(self) -> int:
        """Storage bits of one value."""
        return _BITS.get(self, 8)

    @property
    def is_float(self) -> bool:
        """True for the fp8 formats, which have no zero point and no integer grid."""
        return self in (QuantDtype.FP8_E4M3, QuantDtype.FP8_E5M2)

    @property
    def is_signed(self) -> bool:
        """True for formats that hold negative values."""
        return self not in (QuantDtype.UINT8, QuantDtype.UINT6, QuantDtype.UINT4)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype that holds quantized values (int4 values live in int8/uint8)."""
        return _TORCH_STORAGE[self]


_BITS = {QuantDtype.INT4: 4, QuantDtype.UINT4: 4, QuantDtype.UINT6: 6}

_TORCH_STORAGE = {
    QuantDtype.INT8: torch.int8,
    QuantDtype.UINT8: torch.uint8,
    QuantDtype.INT4: torch.int8,
    QuantDtype.UINT4: torch.uint8,
    QuantDtype.UINT6: torch.uint8,
    QuantDtype.FP8_E4M3: torch.float8_e4m3fn,
    QuantDtype.FP8_E5M2: torch.float8_e5m2,
}


@dataclass(frozen=True)
class PerTensor:
    """One scale (and zero point) for the whole tensor.

    Example:
        >>> PerTensor()
        PerTensor()
    """


@dataclass(frozen=True)
class PerChannel:
    """One scale per slice along `axis` (axis 0 = output channels of a Linear/Conv weight).

    Example:
        >>> PerChannel(axis=0).axis
        0
    """

    axis: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"PerChannel(axis=...) must be an int, got {type(self.axis).__name__}")


@dataclass(frozen=True)
class PerGroup:
    """One scale per run of `size` consecutive values along the last axis (e.g. g128 for W4A16).

    Example:
        >>> PerGroup(size=128).size
        128
    """

    size: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise TypeError(f"PerGroup(size=...) must be an int, got {type(self.size).__name__}")
        if self.size < 1:
            raise ValueError(f"PerGroup(size={self.size}): the group size must be a positive integer, e.g. 128")


@dataclass(frozen=True)
class PerToken:
    """One scale per row (every axis but the last): dynamic activation quantization per token.

    Example:
        >>> PerToken()
        PerToken()
    """


Granularity = PerTensor | PerChannel | PerGroup | PerToken
_GRANULARITIES = (PerTensor, PerChannel, PerGroup, PerToken)

# Largest finite value of each fp8 format: the value the scale maps max|x| to.
FP8_MAX = {QuantDtype.FP8_E4M3: 448.0, QuantDtype.FP8_E5M2: 57344.0}


@dataclass(frozen=True)
class QuantSpec:
    """A complete quantization scheme.

    Args:
        dtype: int8, uint8, int4, uint4, uint6 (weight-only tables), fp8_e4m3 or fp8_e5m2 (a `QuantDtype`
            or its string).
        symmetric: zero point fixed (0 for signed, the middle code for unsigned); otherwise an
            affine mapping whose zero point makes 0.0 exactly representable.
        narrow_range: drop the lowest code ("restricted range"): int8 uses [-127, 127] and
            scale = amax / 127; full range uses [-128, 127] and scale = amax / 127.5.
        granularity: `PerTensor()`, `PerChannel(axis)`, `PerGroup(size)` or `PerToken()`.

    Example:
        >>> spec = QuantSpec("int4", symmetric=False, granularity=PerGroup(128))
        >>> spec.qmin, spec.qmax
        (-8, 7)
    """

    dtype: QuantDtype = QuantDtype.INT8
    symmetric: bool = True
    narrow_range: bool = False
    granularity: Granularity = field(default_factory=PerTensor)

    def __post_init__(self) -> None:
        try:
            dtype = QuantDtype(self.dtype)
        except ValueError:
            allowed = ", ".join(d.value for d in QuantDtype)
            raise ValueError(f"QuantSpec(dtype={self.dtype!r}) is not a known format; use one of: {allowed}") from None
        object.__setattr__(self, "dtype", dtype)
        for name in ("symmetric", "narrow_range"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"QuantSpec({name}=...) must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.granularity, _GRANULARITIES):
            raise TypeError(
                "QuantSpec(granularity=...) must be PerTensor(), PerChannel(axis), PerGroup(size) or PerToken(), "
                f"got {self.granularity!r}"
            )
        if dtype.is_float and not self.symmetric:
            raise ValueError(
                f"QuantSpec(dtype={dtype.value!r}, symmetric=False): fp8 formats have no zero point; use symmetric=True"
            )
        if dtype.is_float and self.narrow_range:
            raise ValueError(
                f"QuantSpec(dtype={dtype.value!r}, narrow_range=True): narrow range applies to integer formats only; "
                "use narrow_range=False"
            )

    @property
    def qmin(self) -> int:
        """Smallest integer code (narrow range drops the lowest code of the full range)."""
        self._require_integer("qmin")
        bits = self.dtype.bits
        low = -(2 ** (bits - 1)) if self.dtype.is_signed else 0
        return low + 1 if self.narrow_range else low

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        self._require_integer("qmax")
        bits = self.dtype.bits
        return 2 ** (bits - 1) - 1 if self.dtype.is_signed else 2**bits - 1

    @property
    def fp_max(self) -> float:
        """Largest finite value of an fp8 format."""
        if not self.dtype.is_float:
            raise ValueError(f"fp_max is defined for fp8 formats only, not {self.dtype.value}")
        return FP8_MAX[self.dtype]

    @property
    def is_dynamic(self) -> bool:
        """Per-token ranges can only be computed at run time, from the batch itself."""
        return isinstance(self.granularity, PerToken)

    def _require_integer(self, what: str) -> None:
        if self.dtype.is_float:
            raise ValueError(f"{what} is defined for integer formats only; {self.dtype.value} has no integer grid")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON/YAML.

        Example:
            >>> QuantSpec().to_dict()["dtype"]
            'int8'
        """
        g = self.granularity
        gran: dict[str, Any] = {"type": type(g).__name__}
        if isinstance(g, PerChannel):
            gran["axis"] = g.axis
        elif isinstance(g, PerGroup):
            gran["size"] = g.size
        return {
            "dtype": self.dtype.value,
            "symmetric": self.symmetric,
            "narrow_range": self.narrow_range,
            "granularity": gran,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        """Inverse of `to_dict`; unknown keys raise `ValueError`.

        Example:
            >>> QuantSpec.from_dict({"dtype": "uint8", "symmetric": False}).dtype.value
            'uint8'
        """
        if not isinstance(data, dict):
            raise TypeError(f"a QuantSpec must be given as a mapping, got {type(data).__name__}")
        allowed = {"dtype", "symmetric", "narrow_range", "granularity"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown QuantSpec keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        kwargs = dict(data)
        if "granularity" in kwargs:
            kwargs["granularity"] = granularity_from_dict(kwargs["granularity"])
        return cls(**kwargs)


def granularity_from_dict(data: Any) -> Granularity:
    """Build a granularity from `{"type": "PerChannel", "axis": 0}` or a bare name like "per_tensor".

    Example:
        >>> granularity_from_dict({"type": "PerGroup", "size": 64})
        PerGroup(size=64)
    """
    if isinstance(data, str):
        data = {"type": data}
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError(f"granularity must be a name or a mapping with a 'type' key, got {data!r}")
    names = {
        "pertensor": PerTensor,
        "perchannel": PerChannel,
        "pergroup": PerGroup,
        "pertoken": PerToken,
    }
    key = str(data["type"]).replace("_", "").replace("-", "").lower()
    if key not in names:
        raise ValueError(f"unknown granularity {data['type']!r}; use PerTensor, PerChannel, PerGroup or PerToken")
    params = {k: v for k, v in data.items() if k != "type"}
    try:
        return names[key](**params)
    except TypeError as err:
        raise ValueError(f"bad parameters {params} for granularity {data['type']!r}: {err}") from None
