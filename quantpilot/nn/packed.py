"""Weight-only quantized Linear with packed storage: int4 codes two per byte, int8 codes one per byte.

`WeightOnlyLinear` is what the LLM weight methods (RTN, GPTQ, AWQ) produce: unsigned codes `q` with
per-group (or per-output-channel) scale `s` and zero point `z`, the weight being `(q - z) * s`, as
the GPTQ/AWQ reference implementations store it. Only the codes and the 16-bit qparams are kept,
so the saved file and the resident model really shrink (W4 g128: 4 bits + 2 x 16 bits per 128
weights = 4.25 bits per weight instead of 32). Zero points are integers in 0..15 (or 0..255), exact
in fp16 and bf16, so they share the scales' dtype.

The module's own forward dequantizes on the fly (exact reference, any activation dtype); the
`torch-int8` engine swaps it for PyTorch's packed CPU kernels (`quantpilot.nn.integer_linear`).

Example:
    >>> import torch
    >>> codes = torch.randint(0, 16, (4, 8), dtype=torch.uint8)
    >>> torch.equal(unpack_int4(pack_int4(codes)), codes), pack_int4(codes).shape
    (True, torch.Size([4, 4]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from ..primitives import dequantize
from ..spec import PerChannel, PerGroup, QuantSpec
from .quant_module import QuantModule
from .tensor_quantizer import TensorQuantizer

__all__ = ["pack_int4", "unpack_int4", "weight_only_spec", "WeightOnlyLinear"]

_SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


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


def weight_only_spec(bits: int, group_size: int | None, symmetric: bool = False) -> QuantSpec:
    """The weight scheme of the LLM weight methods: unsigned codes, per group or per output channel.

    Example:
        >>> weight_only_spec(4, 128).granularity, weight_only_spec(8, None).dtype.value
        (PerGroup(size=128), 'uint8')
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8 (packed int4 / int8 storage), got {bits}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2):
        raise ValueError(f"group_size must be None (per output channel) or an integer >= 2, got {group_size!r}")
    granularity = PerChannel(0) if group_size is None else PerGroup(group_size)
    return QuantSpec("uint4" if bits == 4 else "uint8", symmetric=symmetric, granularity=granularity)


class WeightOnlyLinear(QuantModule):
    """`y = x @ ((q - z) * s).T + b` with `q` stored packed (4 bit) or as bytes (8 bit), `s`, `z` in 16 bits.

    Build it with `from_codes`; `quantpilot.load` rebuilds it with `from_saved`.

    Args:
        in_features, out_features: the Linear's sizes.
        spec: a `weight_only_spec` (uint4 / uint8, PerGroup or PerChannel(0)).
        has_bias: whether the layer has a bias (kept in float32).
        scale_dtype: torch.float16 or torch.bfloat16, for scales and zero points.

    Example:
        >>> layer = WeightOnlyLinear.from_codes(
        ...     torch.full((2, 4), 9), torch.ones(2, 1), torch.full((2, 1), 8), weight_only_spec(4, None)
        ... )
        >>> layer(torch.ones(1, 4)).tolist()
        [[4.0, 4.0]]
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        spec: QuantSpec,
        has_bias: bool = True,
        scale_dtype: torch.dtype = torch.float16,
    ) -> None:
        super().__init__()
        if spec.dtype.value not in ("uint4", "uint8"):
            raise ValueError(f"WeightOnlyLinear stores uint4 or uint8 codes, got {spec.dtype.value}")
        if scale_dtype not in _SCALE_DTYPES.values():
            raise ValueError(f"scale_dtype must be torch.float16 or torch.bfloat16, got {scale_dtype}")
        g = spec.granularity
        if isinstance(g, PerGroup):
            if in_features % g.size:
                raise ValueError(
                    f"in_features={in_features} is not a multiple of group_size={g.size}; pick a group size that "
                    "divides it (e.g. 32, 64, 128) or group_size=None for per-channel scales"
                )
            groups = in_features // g.size
        elif isinstance(g, PerChannel) and g.axis == 0:
            groups = 1
        else:
            raise ValueError(f"weights are quantized per group or per output channel (PerChannel(0)), got {g}")
        self.bits = 4 if spec.dtype.value == "uint4" else 8
        if self.bits == 4 and in_features % 2:
            raise ValueError(f"packed int4 needs an even in_features, got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.weight_spec = spec
        self.input_quantizer = TensorQuantizer(None)  # activations stay float (W4A16 / W8A16)
        stored = in_features // 2 if self.bits == 4 else in_features
        self.register_buffer("weight_packed", torch.zeros(out_features, stored, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=scale_dtype))
        self.register_buffer("weight_zero_point", torch.zeros(out_features, groups, dtype=scale_dtype))
        self.register_buffer("bias", torch.zeros(out_features) if has_bias else None)

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        spec: QuantSpec,
        bias: torch.Tensor | None = None,
        scale_dtype: torch.dtype = torch.float16,
    ) -> WeightOnlyLinear:
        """A layer holding `codes` (out, in) with `scale`, `zero_point` shaped (out, groups) (or (out,)).

        The scales are rounded to `scale_dtype` here; quantize with the rounded scales (as
        `quantpilot.algorithms.rtn` does) so that what is stored is what was optimized.

        Example:
            >>> spec = weight_only_spec(8, None)
            >>> WeightOnlyLinear.from_codes(torch.zeros(3, 2), torch.ones(3), torch.zeros(3), spec).weight_packed.shape
            torch.Size([3, 2])
        """
        if codes.dim() != 2:
            raise ValueError(f"codes must be 2-D (out_features, in_features), got shape {tuple(codes.shape)}")
        out_features, in_features = codes.shape
        layer = cls(in_features, out_features, spec, bias is not None, scale_dtype)
        qmax = 15 if layer.bits == 4 else 255
        if codes.numel() and (float(codes.min()) < 0 or float(codes.max()) > qmax):
            raise ValueError(f"codes must lie in 0..{qmax} for {layer.bits}-bit unsigned storage")
        groups = layer.weight_scale.shape[1]
        scale = scale.detach().reshape(out_features, groups)
        zero_point = zero_point.detach().reshape(out_features, groups)
        codes = codes.detach().round().to(torch.uint8) if codes.dtype.is_floating_point else codes.to(torch.uint8)
        layer.weight_packed = pack_int4(codes) if layer.bits == 4 else codes.contiguous()
        layer.weight_scale = scale.to(scale_dtype).contiguous()
        layer.weight_zero_point = zero_point.to(scale_dtype).contiguous()
        if bias is not None:
            layer.bias = bias.detach().float().clone()
        return layer

    def saved_config(self) -> dict[str, Any]:
        """What `from_saved` needs to rebuild the empty layer (stored in the saved layer map).

        Example:
            >>> WeightOnlyLinear(128, 4, weight_only_spec(4, 64)).saved_config()["scale_dtype"]
            'float16'
        """
        dtype_name = next(k for k, v in _SCALE_DTYPES.items() if v == self.weight_scale.dtype)
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "has_bias": self.bias is not None,
            "scale_dtype": dtype_name,
        }

    @classmethod
    def from_saved(cls, module: Any, entry: dict[str, Any]) -> WeightOnlyLinear:
        """An empty layer shaped as the saved one; `quantpilot.load` then fills it from the file.

        Args:
            module: the module found at this name in the freshly quantized float model (unused:
                the entry holds everything).
            entry: the layer's entry of the saved map (`weights` spec and `config`).

        Example:
            >>> layer = WeightOnlyLinear(128, 4, weight_only_spec(4, 64), has_bias=False)
            >>> entry = {"weights": layer.weight_spec.to_dict(), "config": layer.saved_config()}
            >>> WeightOnlyLinear.from_saved(None, entry).weight_scale.shape
            torch.Size([4, 2])
        """
        config = entry.get("config") or {}
        try:
            return cls(
                int(config["in_features"]),
                int(config["out_features"]),
                QuantSpec.from_dict(entry["weights"]),
                bool(config["has_bias"]),
                _SCALE_DTYPES[config["scale_dtype"]],
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"the saved entry of a WeightOnlyLinear lacks {err}; the map file is damaged") from None

    @property
    def is_frozen(self) -> bool:
        """Always True: the weight only ever exists as codes."""
        return True

    @property
    def group_size(self) -> int:
        """Input columns sharing one scale (in_features for per-channel scales)."""
        return self.in_features // self.weight_scale.shape[1]

    def weight_codes(self) -> torch.Tensor:
        """The unpacked codes, uint8 (out_features, in_features)."""
        return unpack_int4(self.weight_packed) if self.bits == 4 else self.weight_packed

    def quantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The dequantized weight `(q - z) * s` in `dtype`, computed by `quantpilot.primitives.dequantize`."""
        codes = self.weight_codes()
        scale = self.weight_scale.float()
        zero = self.weight_zero_point.float()
        if isinstance(self.weight_spec.granularity, PerChannel):
            scale, zero = scale[:, 0], zero[:, 0]
        return dequantize(codes, scale, zero, self.weight_spec, dtype)

    def weight_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored (scale, zero point), shaped (out_features, groups)."""
        return self.weight_scale, self.weight_zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.quantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        scheme = "per channel" if isinstance(self.weight_spec.granularity, PerChannel) else f"g{self.group_size}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, weight=uint{self.bits} {scheme}, "
            f"scales={self.weight_scale.dtype}"
        )
