"""Sentence embeddings (mean pooling + L2 normalisation, as all-MiniLM-L6-v2 is used) and their metrics.

Example:
    >>> import torch
    >>> a = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    >>> retrieval_agreement(a, a)
    1.0
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["token_batches", "embed", "mean_pool", "retrieval_agreement"]


def token_batches(
    tokenizer: Any, sentences: Sequence[str], batch_size: int = 32, max_length: int = 128
) -> Iterator[dict]:
    """Tokenized batches (dicts of tensors) ready for `model(**batch)`.

    Example:
        >>> list(token_batches(lambda s, **k: {"n": len(s)}, ["a", "b", "c"], batch_size=2))
        [{'n': 2}, {'n': 1}]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(sentences), batch_size):
        chunk = list(sentences[start : start + batch_size])
        yield tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors that are not padding.

    Example:
        >>> import torch
        >>> mean_pool(torch.ones(1, 3, 2), torch.tensor([[1, 1, 0]])).tolist()
        [[1.0, 1.0]]
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embed(model: nn.Module, tokenizer: Any, sentences: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Unit-norm float32 sentence embeddings, one row per sentence.

    Example:
        >>> embed  # doctest: +ELLIPSIS
        <function embed at ...>
    """
    rows = []
    for batch in token_batches(tokenizer, sentences, batch_size):
        hidden = model(**batch).last_hidden_state
        rows.append(nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]).float(), dim=-1))
    return torch.cat(rows)


def retrieval_agreement(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Share of queries whose nearest neighbour (other than itself) is the same under both embeddings.

    Args:
        reference, candidate: `(n, d)` unit-norm embeddings of the same n sentences.

    Example:
        >>> import torch
        >>> e = torch.eye(3)
        >>> retrieval_agreement(e, e)
        1.0
    """
    if reference.shape != candidate.shape or reference.dim() != 2 or reference.shape[0] < 2:
        raise ValueError("need two (n, d) embedding matrices of the same shape with n >= 2")

    def neighbours(e: torch.Tensor) -> torch.Tensor:
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.argmax(dim=1)

    return float((neighbours(reference.float()) == neighbours(candidate.float())).float().mean())
