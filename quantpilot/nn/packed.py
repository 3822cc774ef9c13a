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

from ..spec import QuantSpec
from .packed_weight import OUTPUT_DTYPES, SCALE_DTYPES, PackedWeight, weight_only_spec
from .packing import pack_int4, unpack_int4

__all__ = ["pack_int4", "unpack_int4", "weight_only_spec", "PackedWeight", "WeightOnlyLinear", "WeightOnlyEmbedding"]


def _scale_dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in SCALE_DTYPES.items() if v == dtype)


def _float_dtype_of(module: Any) -> torch.dtype:
    """The float dtype of the layer a saved one replaces (what its `.weight` should answer in)."""
    weight = getattr(module, "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else torch.float32


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

    computes = "linear"

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
            module: the module found at this name in the freshly quantized float model (only its
                weight's dtype is read: the entry holds everything else).
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
        layer.float_dtype = _float_dtype_of(module)
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

    computes = "lookup"

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
            "output_dtype": str(self.float_dtype).removeprefix("torch."),
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
        if output_dtype not in OUTPUT_DTYPES:
            raise ValueError(
                f"the saved WeightOnlyEmbedding has output_dtype {output_dtype!r}; the map file is damaged"
            )
        table.float_dtype = OUTPUT_DTYPES[output_dtype]
        return table

    @property
    def output_dtype(self) -> torch.dtype:
        """Dtype of the looked-up rows (and of `.weight`): the float dtype the rest of the model runs in."""
        return self.float_dtype

    @output_dtype.setter
    def output_dtype(self, dtype: torch.dtype) -> None:
        self.float_dtype = dtype

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        if indices.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"an embedding looks up integer token ids, got {indices.dtype}")
        flat = indices.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            # nn.Embedding raises here; Python indexing would wrap -1 around to the last row silently.
            low, high = int(flat.min()), int(flat.max())
            raise IndexError(f"token ids must lie in 0..{self.num_embeddings - 1}, got {low}..{high}")
        rows = self._dequantize_rows(
            self.weight_packed[flat], self.weight_scale[flat], self.weight_zero_point[flat], self.float_dtype
        )
        return rows.reshape(*indices.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._scheme_repr()}"
