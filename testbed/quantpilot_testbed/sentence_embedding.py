"""Sentence embeddings (mean pooling + L2 normalisation, as all-MiniLM-L6-v2 is used) and their metrics.

Example:
    >>> import torch
    >>> a = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    >>> retrieval_agreement(a, a)
    1.0
"""

from __future__ import annotations

import torch

# The generic pieces live in the library (the CLI uses them); re-exported for the benchmarks and demos.
from quantpilot.text import embed, mean_pool, token_batches

__all__ = ["token_batches", "embed", "mean_pool", "retrieval_agreement"]


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
