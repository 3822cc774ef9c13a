"""`QuantEmbedding`: an embedding table stored as integers (weight-only; its input is indices).

In a small encoder the token table is half the parameters, so a model is only ~4x smaller on disk
once the table is quantized too.

Example:
    >>> import torch
    >>> emb = QuantEmbedding.from_float(torch.nn.Embedding(10, 4))
    >>> emb(torch.tensor([[1, 2]])).shape
    torch.Size([1, 2, 4])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .packed import WeightOnlyEmbedding
from .quant_module import QuantModule

__all__ = ["QuantEmbedding"]


class QuantEmbedding(QuantModule):
    """Quantized `nn.Embedding`; a per-channel spec means one scale per row (token).

    Example:
        >>> import torch
        >>> QuantEmbedding.from_float(torch.nn.Embedding(5, 3)).num_embeddings
        5
    """

    computes = "lookup"

    def __init__(self, embedding: nn.Embedding, **quant) -> None:
        super().__init__()
        if type(embedding) is not nn.Embedding:
            raise TypeError(f"QuantEmbedding wraps nn.Embedding, got {type(embedding).__name__}")
        if embedding.max_norm is not None:
            raise ValueError(
                "an nn.Embedding with max_norm renormalises its weight in place, which integer storage cannot do; "
                "skip this layer in the recipe"
            )
        quant.pop("input_quantizer", None)  # indices are never quantized
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.scale_grad_by_freq, self.sparse = embedding.scale_grad_by_freq, embedding.sparse
        self._setup_quantization(embedding.weight, input_quantizer=None, **quant)

    @classmethod
    def from_float(cls, module: nn.Module, **quant) -> QuantEmbedding:
        """Wrap an `nn.Embedding`, sharing its weight until freeze."""
        return cls(module, **quant)

    def weight_only_form(
        self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scale_dtype: torch.dtype
    ) -> WeightOnlyEmbedding:
        """The packed `WeightOnlyEmbedding` holding these codes (`quantpilot.nn.storage`).

        Example:
            >>> import torch
            >>> from quantpilot.nn.packed import weight_only_spec
            >>> emb = QuantEmbedding(torch.nn.Embedding(3, 4), weight_spec=weight_only_spec(8, None))
            >>> emb.weight_only_form(torch.zeros(3, 4), torch.ones(3), torch.zeros(3), torch.float16).num_embeddings
            3
        """
        return WeightOnlyEmbedding.from_codes(codes, scale, zero_point, self.weight_spec, self.padding_idx, scale_dtype)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        weight = self.quantized_weight(self.float_dtype)
        return F.embedding(indices, weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._weight_repr()}"
