"""Error measures: a quantized tensor against its reference, and a language model against its text or its float model.

`perplexity` and `kl_to_reference` take any causal LM called as `model(input_ids=...)` that returns
logits (a tensor or an object with `.logits`), and a 1-D tensor of token ids.

Example:
    >>> import torch
    >>> x = torch.tensor([1.0, -2.0, 3.0])
    >>> round(sqnr_db(x, x + 0.01), 1)
    46.7
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .batches import eval_mode

__all__ = ["sqnr_db", "cosine_similarity", "max_abs_error", "perplexity", "kl_to_reference"]


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


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    raise TypeError(f"the model returned {type(output).__name__}; perplexity needs logits (a tensor or .logits)")


def _windows(tokens: torch.Tensor, window: int, max_windows: int | None) -> torch.Tensor:
    """The first `max_windows` non-overlapping windows of `tokens`, shaped (n, window)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
        raise ValueError("tokens must be a 1-D tensor of token ids, e.g. tokenizer(text)['input_ids'] as a tensor")
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens (one to predict from, one to predict), got {window}")
    n = tokens.numel() // window
    if max_windows is not None:
        n = min(n, int(max_windows))
    if n < 1:
        raise ValueError(f"{tokens.numel()} tokens do not fill one window of {window}; pass a smaller window")
    return tokens[: n * window].view(n, window).long()


def kl_to_reference(
    model: nn.Module,
    reference: nn.Module,
    tokens: torch.Tensor,
    window: int = 256,
    max_windows: int | None = None,
    batch_size: int = 8,
) -> float:
    """Mean per-token KL(reference || model) of the next-token distributions, in nats.

    How far a quantized model's predictions moved from the float model's, token by token. It sees
    differences that perplexity averages away: when quantization noise helps some tokens and hurts
    others, perplexity can even improve while the model drifts.

    Args:
        model: the quantized causal LM.
        reference: the float model it was made from.
        tokens, window, max_windows, batch_size: as in `perplexity`.

    Returns:
        The mean KL over every position of every window (0 for an identical model).

    Example:
        >>> class Fixed(torch.nn.Module):
        ...     def __init__(self, logits):
        ...         super().__init__(); self.logits = logits
        ...     def forward(self, input_ids):
        ...         return self.logits.expand(*input_ids.shape, 2)
        >>> p, q = Fixed(torch.tensor([0.0, 0.0])), Fixed(torch.tensor([0.0, math.log(3.0)]))
        >>> round(kl_to_reference(q, p, torch.arange(8) % 2, window=4), 4)  # KL([.5,.5] || [.25,.75])
        0.1438
    """
    windows = _windows(tokens, window, max_windows)
    total, count = 0.0, 0
    with eval_mode(model), eval_mode(reference), torch.no_grad():
        for start in range(0, len(windows), batch_size):
            ids = windows[start : start + batch_size]
            ref = torch.log_softmax(_logits(reference(input_ids=ids)).float(), dim=-1)
            out = torch.log_softmax(_logits(model(input_ids=ids)).float(), dim=-1)
            if out.shape != ref.shape:
                raise ValueError(f"the models disagree on the output shape: {tuple(out.shape)} vs {tuple(ref.shape)}")
            total += (ref.exp() * (ref - out)).sum().item()
            count += ids.numel()
    return total / count


def perplexity(
    model: nn.Module, tokens: torch.Tensor, window: int = 256, max_windows: int | None = None, batch_size: int = 8
) -> float:
    """Perplexity over non-overlapping windows of `tokens` (each window predicts its own tokens 2..window).

    The tail shorter than a window is dropped, as the GPTQ and AWQ evaluations do.

    Args:
        model: a causal LM taking `input_ids` (Hugging Face style) and returning logits.
        tokens: 1-D LongTensor, e.g. `torch.tensor(tokenizer(text)["input_ids"])`.
        window: tokens per window (at most the model's context).
        max_windows: evaluate only the first this many windows (None: all).
        batch_size: windows per forward pass.

    Returns:
        exp(mean negative log-likelihood per predicted token).

    Example:
        >>> class Uniform(torch.nn.Module):
        ...     def forward(self, input_ids):
        ...         return torch.zeros(*input_ids.shape, 50)
        >>> round(perplexity(Uniform(), torch.arange(40) % 50, window=10), 3)
        50.0
    """
    windows = _windows(tokens, window, max_windows)
    total, count = 0.0, 0
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(windows), batch_size):
            ids = windows[start : start + batch_size]
            logits = _logits(model(input_ids=ids)).float()
            nll = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            total += nll.item()
            count += ids[:, 1:].numel()
    return math.exp(total / count)
