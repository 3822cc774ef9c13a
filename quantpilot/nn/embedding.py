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

from .quant_module import QuantModule

__all__ = ["QuantEmbedding"]


class QuantEmbedding(QuantModule):
    """Quantized `nn.Embedding`; a per-channel spec means one scale per row (token).

    Example:
        >>> import torch
        >>> QuantEmbedding.from_float(torch.nn.Embedding(5, 3)).num_embeddings
        5
    """

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
        self.float_dtype = embedding.weight.dtype
        self._setup_quantization(embedding.weight, input_quantizer=None, **quant)

    @classmethod
    def from_float(cls, module: nn.Module, **quant) -> QuantEmbedding:
        """Wrap an `nn.Embedding`, sharing its weight until freeze."""
        return cls(module, **quant)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        weight = self.quantized_weight(self.float_dtype)
        return F.embedding(indices, weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq, self.sparse)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._weight_repr()}"
