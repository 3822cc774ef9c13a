"""Weight-only quantized Linear and Embedding with packed storage: int4 codes two per byte, int8 one per byte.

`WeightOnlyLinear` is what the LLM weight methods (RTN, GPTQ, AWQ) produce: unsigned codes `q` with
per-group (or per-output-channel) scale `s` and zero point `z`, the weight being `(q - z) * s`, as
the GPTQ/AWQ reference implementations store it. Only the codes and the 16-bit qparams are kept,
so the saved file and the resident model really shrink (W4 g128: 4 bits + 2 x 16 bits per 128
weights = 4.25 bits per weight instead of 32). Zero points are integers in 0..15 (or 0..255), exact
in fp16 and bf16, so they share the scales' dtype.

The module's own forward dequantizes on the fly (exact reference, any activation dtype); the
`torch-int8` engine swaps it for PyTorch's packed CPU kernels (`quantpilot.nn.integer_linear`).
`WeightOnlyEmbedding` stores a token table the same way (in a small LM it is a large share of the
weights), and a tied output head can read its codes without a second copy.

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

__all__ = ["pack_int4", "unpack_int4", "weight_only_spec", "PackedWeight", "WeightOnlyLinear", "WeightOnlyEmbedding"]

_SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_OUTPUT_DTYPES = {"float32": torch.float32, **_SCALE_DTYPES}


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


def _scale_dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in _SCALE_DTYPES.items() if v == dtype)


class PackedWeight(QuantModule):
    """Storage shared by the packed weight-only layers: a (rows, cols) weight as `(q - z) * s`.

    `q` is stored packed (4 bit, two per byte along `cols`) or as bytes (8 bit); `s` and `z` are 16-bit,
    one per row (per-channel) or per group of `cols`. `WeightOnlyLinear` reads rows as output features
    and `WeightOnlyEmbedding` as tokens; both layouts are the (out, in) layout a Linear multiplies with.

    Example:
        >>> issubclass(WeightOnlyLinear, PackedWeight), issubclass(WeightOnlyEmbedding, PackedWeight)
        (True, True)
    """

    def _init_storage(self, rows: int, cols: int, spec: QuantSpec, scale_dtype: torch.dtype, what: str) -> None:
        if spec.dtype.value not in ("uint4", "uint8"):
            raise ValueError(f"{type(self).__name__} stores uint4 or uint8 codes, got {spec.dtype.value}")
        if scale_dtype not in _SCALE_DTYPES.values():
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
        self.bits = 4 if spec.dtype.value == "uint4" else 8
        if self.bits == 4 and cols % 2:
            raise ValueError(f"packed int4 needs an even {what}, got {cols}")
        self.weight_spec = spec
        self.input_quantizer = TensorQuantizer(None)  # activations stay float (weight-only)
        stored = cols // 2 if self.bits == 4 else cols
        self.register_buffer("weight_packed", torch.zeros(rows, stored, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(rows, groups, dtype=scale_dtype))
        self.register_buffer("weight_zero_point", torch.zeros(rows, groups, dtype=scale_dtype))

    @classmethod
    def _from_entry(cls, entry: dict[str, Any], build: Any) -> Any:
        """`build(config, spec, scale_dtype)` on a saved map entry; a missing or bad field is a damaged map."""
        config = entry.get("config") or {}
        try:
            return build(config, QuantSpec.from_dict(entry["weights"]), _SCALE_DTYPES[config["scale_dtype"]])
        except (KeyError, TypeError) as err:
            raise ValueError(f"the saved entry of a {cls.__name__} lacks {err}; the map file is damaged") from None

    def _store_codes(self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Fill the buffers from unpacked codes (rows, cols) and qparams shaped (rows, groups) or (rows,)."""
        if codes.dim() != 2 or tuple(codes.shape) != (self.weight_packed.shape[0], self.weight_cols):
            raise ValueError(
                f"codes must be 2-D shaped {(self.weight_packed.shape[0], self.weight_cols)}, got {tuple(codes.shape)}"
            )
        qmax = 15 if self.bits == 4 else 255
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


class WeightOnlyLinear(PackedWeight):
    """`y = x @ ((q - z) * s).T + b` with `q` stored packed (4 bit) or as bytes (8 bit), `s`, `z` in 16 bits.

    Build it with `from_codes`; `quantpilot.load` rebuilds it with `from_saved`. A head whose weight
    is the token embedding's (GPT-2's tied `lm_head`) shares the `WeightOnlyEmbedding`'s buffers and
    records its name in `tied_to`, so the codes exist once in memory and in the saved file.

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
        self._init_storage(out_features, in_features, spec, scale_dtype, "in_features")
        self.in_features, self.out_features = in_features, out_features
        self.tied_to: str | None = None
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
        layer._store_codes(codes, scale, zero_point)
        if bias is not None:
            layer.bias = bias.detach().float().clone()
        return layer

    @classmethod
    def tied_head(cls, embedding: WeightOnlyEmbedding, embedding_name: str, bias: torch.Tensor | None = None):
        """An output head `x @ E.T` reading the codes of `embedding` (same tensors, nothing copied).

        Example:
            >>> emb = WeightOnlyEmbedding.from_codes(torch.zeros(5, 4), torch.ones(5), torch.zeros(5),
            ...                                      weight_only_spec(8, None))
            >>> head = WeightOnlyLinear.tied_head(emb, "wte")
            >>> head.weight_packed is emb.weight_packed, head.out_features
            (True, 5)
        """
        if not isinstance(embedding, WeightOnlyEmbedding):
            raise TypeError(f"tied_head reads a WeightOnlyEmbedding, got {type(embedding).__name__}")
        layer = cls(
            embedding.embedding_dim,
            embedding.num_embeddings,
            embedding.weight_spec,
            bias is not None,
            embedding.weight_scale.dtype,
        )
        layer.tie_to(embedding, embedding_name)
        if bias is not None:
            layer.bias = bias.detach().float().clone()
        return layer

    def tie_to(self, embedding: WeightOnlyEmbedding, embedding_name: str) -> None:
        """Share `embedding`'s code and qparam tensors (after checking they have this layer's shape)."""
        if (embedding.num_embeddings, embedding.embedding_dim) != (self.out_features, self.in_features):
            raise ValueError(
                f"cannot tie a {self.out_features}x{self.in_features} head to the "
                f"{embedding.num_embeddings}x{embedding.embedding_dim} embedding {embedding_name!r}"
            )
        self.weight_packed = embedding.weight_packed
        self.weight_scale = embedding.weight_scale
        self.weight_zero_point = embedding.weight_zero_point
        self.tied_to = embedding_name

    def restore_ties(self, root: torch.nn.Module) -> None:
        """After `quantpilot.load` rebuilt the layers: share the tied embedding's tensors again.

        Example:
            >>> WeightOnlyLinear(4, 2, weight_only_spec(8, None)).restore_ties(torch.nn.Module())  # untied: no-op
        """
        if self.tied_to is None:
            return
        try:
            embedding = root.get_submodule(self.tied_to)
        except AttributeError:
            raise ValueError(f"the head is tied to {self.tied_to!r}, which this model does not have") from None
        if not isinstance(embedding, WeightOnlyEmbedding):
            raise ValueError(
                f"the head is tied to {self.tied_to!r}, which was not rebuilt as a WeightOnlyEmbedding; the saved "
                "map is damaged"
            )
        self.tie_to(embedding, self.tied_to)

    def saved_config(self) -> dict[str, Any]:
        """What `from_saved` needs to rebuild the empty layer (stored in the saved layer map).

        Example:
            >>> WeightOnlyLinear(128, 4, weight_only_spec(4, 64)).saved_config()["scale_dtype"]
            'float16'
        """
        config = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "has_bias": self.bias is not None,
            "scale_dtype": _scale_dtype_name(self.weight_scale.dtype),
        }
        if self.tied_to is not None:
            config["tied_to"] = self.tied_to
        return config

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
        layer = cls._from_entry(
            entry,
            lambda config, spec, scale_dtype: cls(
                int(config["in_features"]), int(config["out_features"]), spec, bool(config["has_bias"]), scale_dtype
            ),
        )
        layer.tied_to = (entry.get("config") or {}).get("tied_to")
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.quantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        tied = f", tied to {self.tied_to}" if self.tied_to else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._scheme_repr()}{tied}"


class WeightOnlyEmbedding(PackedWeight):
    """A token table stored as packed codes; a lookup dequantizes only the rows it gathers.

    The codes are grouped along `embedding_dim`, the same layout a tied output head multiplies
    with (`WeightOnlyLinear.tied_head`). Outputs are `output_dtype` (float32 unless set, e.g. to
    bfloat16 when the rest of the model runs in bf16).

    Example:
        >>> emb = WeightOnlyEmbedding.from_codes(
        ...     torch.tensor([[0, 15], [15, 0]]), torch.ones(2, 1), torch.zeros(2, 1), weight_only_spec(4, None)
        ... )
        >>> emb(torch.tensor([[1, 0]])).tolist()
        [[[15.0, 0.0], [0.0, 15.0]]]
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        spec: QuantSpec,
        padding_idx: int | None = None,
        scale_dtype: torch.dtype = torch.float16,
    ) -> None:
        super().__init__()
        self._init_storage(num_embeddings, embedding_dim, spec, scale_dtype, "embedding_dim")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.output_dtype = torch.float32

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        spec: QuantSpec,
        padding_idx: int | None = None,
        scale_dtype: torch.dtype = torch.float16,
    ) -> WeightOnlyEmbedding:
        """A table holding `codes` (num_embeddings, embedding_dim) with qparams shaped (num, groups) or (num,).

        Example:
            >>> spec = weight_only_spec(8, None)
            >>> WeightOnlyEmbedding.from_codes(torch.zeros(3, 2), torch.ones(3), torch.zeros(3), spec).num_embeddings
            3
        """
        if codes.dim() != 2:
            raise ValueError(f"codes must be 2-D (num_embeddings, embedding_dim), got shape {tuple(codes.shape)}")
        table = cls(codes.shape[0], codes.shape[1], spec, padding_idx, scale_dtype)
        table._store_codes(codes, scale, zero_point)
        return table

    def saved_config(self) -> dict[str, Any]:
        """What `from_saved` needs to rebuild the empty table.

        Example:
            >>> WeightOnlyEmbedding(10, 128, weight_only_spec(4, 64)).saved_config()["embedding_dim"]
            128
        """
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            "scale_dtype": _scale_dtype_name(self.weight_scale.dtype),
            "output_dtype": str(self.output_dtype).removeprefix("torch."),
        }

    @classmethod
    def from_saved(cls, module: Any, entry: dict[str, Any]) -> WeightOnlyEmbedding:
        """An empty table shaped as the saved one; `quantpilot.load` then fills it from the file.

        Example:
            >>> table = WeightOnlyEmbedding(10, 128, weight_only_spec(4, 64))
            >>> entry = {"weights": table.weight_spec.to_dict(), "config": table.saved_config()}
            >>> WeightOnlyEmbedding.from_saved(None, entry).weight_scale.shape
            torch.Size([10, 2])
        """
        table = cls._from_entry(
            entry,
            lambda config, spec, scale_dtype: cls(
                int(config["num_embeddings"]), int(config["embedding_dim"]), spec, config["padding_idx"], scale_dtype
            ),
        )
        # The float dtype the rest of the model runs in (a bf16 model's table must not hand it float32).
        output_dtype = (entry.get("config") or {}).get("output_dtype", "float32")
        if output_dtype not in _OUTPUT_DTYPES:
            raise ValueError(
                f"the saved WeightOnlyEmbedding has output_dtype {output_dtype!r}; the map file is damaged"
            )
        table.output_dtype = _OUTPUT_DTYPES[output_dtype]
        return table

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        if indices.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"an embedding looks up integer token ids, got {indices.dtype}")
        flat = indices.reshape(-1)
        rows = self._dequantize_rows(
            self.weight_packed[flat], self.weight_scale[flat], self.weight_zero_point[flat], self.output_dtype
        )
        return rows.reshape(*indices.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._scheme_repr()}"
