"""`PackedWeight`: the storage of the weight-only layers, `(q - z) * s` with packed codes and 16-bit qparams.

`quantpilot.nn.packed.WeightOnlyLinear` reads the rows as output features and
`WeightOnlyEmbedding` as tokens. Codes are stored two per byte (uint4) or one per byte (uint8),
scales and zero points in fp16 / bf16 (zero points are integers 0..15 / 0..255, exact in both).

Example:
    >>> weight_only_spec(4, 128)
    QuantSpec(dtype=<QuantDtype.UINT4: 'uint4'>, symmetric=False, narrow_range=False, granularity=PerGroup(size=128))
"""

from __future__ import annotations

from typing import Any

import torch

from ..primitives import dequantize
from ..spec import PerChannel, PerGroup, QuantSpec
from .packing import pack_int4, unpack_int4
from .quant_module import QuantModule
from .tensor_quantizer import TensorQuantizer

__all__ = ["weight_only_spec", "check_saved_sizes", "PackedWeight", "SCALE_DTYPES", "OUTPUT_DTYPES"]

SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
OUTPUT_DTYPES = {"float32": torch.float32, **SCALE_DTYPES}
# Code widths the packed layers store: 4 bits two per byte; 6 (llama.cpp's Q6_K tables) and 8, one per byte.
STORED_BITS = {4: "uint4", 6: "uint6", 8: "uint8"}


def weight_only_spec(bits: int, group_size: int | None, symmetric: bool = False) -> QuantSpec:
    """The weight scheme of the LLM weight methods: unsigned codes, per group or per output channel.

    Example:
        >>> weight_only_spec(4, 128).granularity, weight_only_spec(8, None).dtype.value
        (PerGroup(size=128), 'uint8')
    """
    if bits not in STORED_BITS:
        raise ValueError(f"bits must be 4, 6 or 8 (packed int4, or one code per byte), got {bits}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2):
        raise ValueError(f"group_size must be None (per output channel) or an integer >= 2, got {group_size!r}")
    granularity = PerChannel(0) if group_size is None else PerGroup(group_size)
    return QuantSpec(STORED_BITS[bits], symmetric=symmetric, granularity=granularity)


def check_saved_sizes(layer_type: str, config: dict[str, Any]) -> None:
    """The sizes a saved layer config declares are positive integers (a damaged map is a `ValueError`).

    Example:
        >>> check_saved_sizes("Q", {"in_features": -128, "out_features": 4})
        Traceback (most recent call last):
        ValueError: the saved Q has in_features=-128; sizes must be positive integers (the map is damaged)
    """
    for key in ("in_features", "out_features", "num_embeddings", "embedding_dim"):
        size = config.get(key, 1)
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(
                f"the saved {layer_type} has {key}={size!r}; sizes must be positive integers (the map is damaged)"
            )


class PackedWeight(QuantModule):
    """Storage shared by the packed weight-only layers: a (rows, cols) weight as `(q - z) * s`.

    `q` is stored packed (4 bit, two per byte along `cols`) or as bytes (8 bit); `s` and `z` are 16-bit,
    one per row (per-channel) or per group of `cols`. `WeightOnlyLinear` reads rows as output features
    and `WeightOnlyEmbedding` as tokens; both layouts are the (out, in) layout a Linear multiplies with.

    Example:
        >>> from quantpilot.nn.packed import WeightOnlyEmbedding, WeightOnlyLinear
        >>> issubclass(WeightOnlyLinear, PackedWeight), issubclass(WeightOnlyEmbedding, PackedWeight)
        (True, True)
    """

    def _init_storage(self, rows: int, cols: int, spec: QuantSpec, scale_dtype: torch.dtype, what: str) -> None:
        if spec.dtype.value not in STORED_BITS.values():
            raise ValueError(f"{type(self).__name__} stores uint4, uint6 or uint8 codes, got {spec.dtype.value}")
        if scale_dtype not in SCALE_DTYPES.values():
            raise ValueError(f"scale_dtype must be torch.float16 or torch.bfloat16, got {scale_dtype}")
        g = spec.granularity
        if isinstance(g, PerGroup):
            if cols % g.size:
                raise ValueError(
                    f"{what}={cols} is not a multiple of group_size={g.size}; pick a group size that "
                    "divides it (e.g. 32, 64, 128) or group_size=None for per-channel scales"
                )
            groups = cols // g.size
        elif isinstance(g, PerChannel) and g.axis == 0:
            groups = 1
        else:
            raise ValueError(f"weights are quantized per group or per output channel (PerChannel(0)), got {g}")
        self.bits = spec.dtype.bits  # 4: two codes per byte; 6 and 8: one per byte
        if self.bits == 4 and cols % 2:
            raise ValueError(f"packed int4 needs an even {what}, got {cols}")
        self.weight_spec = spec
        self.float_dtype = torch.float32  # what `.weight` answers in; the model's dtype when known
        self.input_quantizer = TensorQuantizer(None)  # activations stay float (weight-only)
        stored = cols // 2 if self.bits == 4 else cols
        self.register_buffer("weight_packed", torch.zeros(rows, stored, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(rows, groups, dtype=scale_dtype))
        self.register_buffer("weight_zero_point", torch.zeros(rows, groups, dtype=scale_dtype))

    @classmethod
    def _from_entry(cls, entry: dict[str, Any], build: Any) -> Any:
        """`build(config, spec, scale_dtype)` on a saved map entry; a missing or bad field is a damaged map."""
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise ValueError(f"the saved config of a {cls.__name__} is not a mapping; the map file is damaged")
        check_saved_sizes(cls.__name__, config)
        try:
            return build(config, QuantSpec.from_dict(entry["weights"]), SCALE_DTYPES[config["scale_dtype"]])
        except (KeyError, TypeError) as err:
            raise ValueError(f"the saved entry of a {cls.__name__} lacks {err}; the map file is damaged") from None

    def _store_codes(self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Fill the buffers from unpacked codes (rows, cols) and qparams shaped (rows, groups) or (rows,)."""
        if codes.dim() != 2 or tuple(codes.shape) != (self.weight_packed.shape[0], self.weight_cols):
            raise ValueError(
                f"codes must be 2-D shaped {(self.weight_packed.shape[0], self.weight_cols)}, got {tuple(codes.shape)}"
            )
        qmax = 2**self.bits - 1
        if codes.numel() and (float(codes.min()) < 0 or float(codes.max()) > qmax):
            raise ValueError(f"codes must lie in 0..{qmax} for {self.bits}-bit unsigned storage")
        rows, groups = self.weight_scale.shape
        scale_dtype = self.weight_scale.dtype
        codes = codes.detach().round().to(torch.uint8) if codes.dtype.is_floating_point else codes.to(torch.uint8)
        self.weight_packed = pack_int4(codes) if self.bits == 4 else codes.contiguous()
        self.weight_scale = scale.detach().reshape(rows, groups).to(scale_dtype).contiguous()
        self.weight_zero_point = zero_point.detach().reshape(rows, groups).to(scale_dtype).contiguous()

    @property
    def weight_cols(self) -> int:
        """Unpacked width of the stored weight (in_features / embedding_dim)."""
        return self.weight_packed.shape[1] * (2 if self.bits == 4 else 1)

    @property
    def is_frozen(self) -> bool:
        """Always True: the weight only ever exists as codes."""
        return True

    @property
    def group_size(self) -> int:
        """Columns sharing one scale (all of them for per-channel scales)."""
        return self.weight_cols // self.weight_scale.shape[1]

    def weight_codes(self) -> torch.Tensor:
        """The unpacked codes, uint8 (rows, cols)."""
        return unpack_int4(self.weight_packed) if self.bits == 4 else self.weight_packed

    def weight_numel(self) -> int:
        """rows x cols: the number of weights the codes stand for."""
        return self.weight_packed.shape[0] * self.weight_cols

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight `(q - z) * s` (rows, cols) in `dtype` (default: the model's float dtype)."""
        return self.quantized_weight(self.float_dtype if dtype is None else dtype)

    def _dequantize_rows(
        self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        codes = unpack_int4(packed) if self.bits == 4 else packed
        scale, zero = scale.float(), zero.float()
        if isinstance(self.weight_spec.granularity, PerChannel):
            scale, zero = scale[:, 0], zero[:, 0]
        return dequantize(codes, scale, zero, self.weight_spec, dtype)

    def quantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The dequantized weight `(q - z) * s` in `dtype`, computed by `quantpilot.primitives.dequantize`."""
        return self._dequantize_rows(self.weight_packed, self.weight_scale, self.weight_zero_point, dtype)

    def weight_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored (scale, zero point), shaped (rows, groups)."""
        return self.weight_scale, self.weight_zero_point

    def _scheme_repr(self) -> str:
        scheme = "per channel" if isinstance(self.weight_spec.granularity, PerChannel) else f"g{self.group_size}"
        return f"weight=uint{self.bits} {scheme}, scales={self.weight_scale.dtype}"
