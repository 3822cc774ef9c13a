"""Text models: sentences to tokenized batches, and sentence embeddings (mean pooling + L2 norm).

Generic over any Hugging Face tokenizer and encoder; the CLI calibrates and checks text models with them.

Example:
    >>> import torch
    >>> mean_pool(torch.ones(1, 2, 3), torch.tensor([[1, 0]])).shape
    torch.Size([1, 3])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["token_batches", "embed", "mean_pool"]


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
