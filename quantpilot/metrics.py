"""Error measures between a reference tensor and its quantized approximation.

Example:
    >>> import torch
    >>> x = torch.tensor([1.0, -2.0, 3.0])
    >>> round(sqnr_db(x, x + 0.01), 1)
    46.7
"""

from __future__ import annotations

import math

import torch

__all__ = ["sqnr_db", "cosine_similarity", "max_abs_error"]


def _pair(reference: torch.Tensor, approx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(reference, torch.Tensor) or not isinstance(approx, torch.Tensor):
        raise TypeError("reference and approx must be torch tensors")
    if reference.shape != approx.shape:
        raise ValueError(f"shapes differ: reference {tuple(reference.shape)} vs approx {tuple(approx.shape)}")
    return reference.detach().double().flatten(), approx.detach().double().flatten()


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio `10 log10(sum(ref^2) / sum((ref - approx)^2))` in dB.

    Args:
        reference: the float tensor.
        approx: its approximation, same shape.

    Returns:
        SQNR in dB; `inf` when they are identical.

    Example:
        >>> import torch
        >>> sqnr_db(torch.ones(4), torch.ones(4))
        inf
    """
    ref, app = _pair(reference, approx)
    noise = float(((ref - app) ** 2).sum())
    signal = float((ref**2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine_similarity(reference: torch.Tensor, approx: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Cosine similarity, over the whole tensor (`dim=None`) or along `dim` (e.g. per embedding row).

    Args:
        reference, approx: tensors of the same shape.
        dim: axis to compare along, or None to flatten.

    Returns:
        A scalar tensor, or one value per slice.

    Example:
        >>> import torch
        >>> cosine_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), dim=-1).tolist()
        [0.7071067811865475]
    """
    if dim is None:
        ref, app = _pair(reference, approx)
        return torch.nn.functional.cosine_similarity(ref, app, dim=0)
    _pair(reference, approx)
    return torch.nn.functional.cosine_similarity(reference.double(), approx.double(), dim=dim)


def max_abs_error(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Largest absolute difference.

    Example:
        >>> import torch
        >>> max_abs_error(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0]))
        0.5
    """
    ref, app = _pair(reference, approx)
    return float((ref - app).abs().max()) if ref.numel() else 0.0
