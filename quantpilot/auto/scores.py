"""The user's metric, counted: `eval_fn(model, data)` to a metric, per-sample scores, and bootstrap intervals.

`eval_fn(model, data)` returns either one float (the metric) or per-sample scores (a 1-D tensor, numpy
array or list; their mean is the metric). Per-sample scores let the autopilot put a bootstrap confidence
interval on every metric and on the quantized model's drop from float; a bare float cannot, and the
report says so. Every call goes through one `Scorer`, which counts them.

Example:
    >>> import torch
    >>> scorer = Scorer(lambda model, data: [model(x) for x in data])
    >>> score = scorer(lambda x: x * 2.0, [1.0, 2.0, 3.0], "doubling")
    >>> score.metric, scorer.calls
    (4.0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Score", "Scorer", "bootstrap_interval", "drop_interval", "split_holdout"]

# Resamples of the bootstrap: 2000 keeps the 95 % bounds stable to ~1e-3 of the spread, in a few ms.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Score:
    """One evaluation: the metric and, when eval_fn gave them, the per-sample scores (float64 numpy)."""

    metric: float
    samples: np.ndarray | None = None

    @property
    def interval(self) -> list[float] | None:
        """95 % bootstrap interval of the metric, or None without per-sample scores."""
        return None if self.samples is None else bootstrap_interval(self.samples)


def _as_score(value: Any, what: str) -> Score:
    """`value` (a number or per-sample scores) as a `Score`; a one-line ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"eval_fn returned a bool for {what}: return a number or a list of per-sample scores")
    if isinstance(value, int | float | np.floating | np.integer):
        metric = float(value)
        samples = None
    elif isinstance(value, torch.Tensor) and value.dim() == 0:
        metric, samples = float(value), None
    else:
        try:
            arr = value.detach().cpu().double().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, float)
        except (TypeError, ValueError):
            kind = type(value).__name__
            raise ValueError(f"eval_fn returned a {kind} for {what}: return a float or 1-D per-sample scores") from None
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"eval_fn returned scores of shape {arr.shape} for {what}: return 1-D per-sample scores")
        metric, samples = float(arr.mean()), arr.astype(np.float64)
    if not math.isfinite(metric):
        raise ValueError(f"eval_fn returned {metric} for {what}: the metric must be a finite number")
    return Score(metric, samples)


class Scorer:
    """`eval_fn` behind a counter: every call of the autopilot's goes through `__call__`.

    Args:
        eval_fn: `eval_fn(model, data)` -> float or per-sample scores.

    Attributes:
        calls: how many times eval_fn ran.
        log: `(label, number of data items)` for each call, in order (tests check what was scored).

    Example:
        >>> s = Scorer(lambda m, d: 1.0); s(None, [0], "x").metric, s.calls
        (1.0, 1)
    """

    def __init__(self, eval_fn: Callable[[Any, Any], Any]) -> None:
        if not callable(eval_fn):
            raise ValueError("eval_fn must be a function eval_fn(model, data) -> float or per-sample scores")
        self.eval_fn = eval_fn
        self.calls = 0
        self.log: list[tuple[str, int]] = []

    def __call__(self, model: Any, data: Sequence[Any], label: str) -> Score:
        self.calls += 1
        self.log.append((label, len(data)))
        with torch.inference_mode():
            return _as_score(self.eval_fn(model, data), label)


def bootstrap_interval(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the mean of `samples` (seeded: the same scores give the same interval).

    Example:
        >>> lo, hi = bootstrap_interval(np.array([0.0, 1.0] * 50)); lo < 0.5 < hi
        True
    """
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, len(samples), size=(BOOTSTRAP_RESAMPLES, len(samples)))
    means = samples[idx].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def drop_interval(reference: Score, candidate: Score, lower_is_better: bool) -> list[float] | None:
    """95 % paired bootstrap interval of the candidate's loss against the reference (same samples), or None.

    The loss is reference - candidate (candidate - reference when lower is better): positive = worse.
    Paired resampling cancels the per-sample difficulty both models share, so the interval is much
    tighter than the two metrics' own intervals.

    Example:
        >>> ref = Score(1.0, np.ones(100)); cand = Score(0.99, np.full(100, 0.99))
        >>> [round(v, 6) for v in drop_interval(ref, cand, False)]
        [0.01, 0.01]
    """
    if reference.samples is None or candidate.samples is None or len(reference.samples) != len(candidate.samples):
        return None
    diff = candidate.samples - reference.samples if lower_is_better else reference.samples - candidate.samples
    return bootstrap_interval(diff)


def split_holdout(items: Sequence[Any], every: int = 2) -> tuple[list[Any], list[Any]]:
    """Deterministic split: every `every`-th item (from the second) is held out, the rest is searched.

    Interleaving rather than cutting in two keeps both parts alike when the data is sorted (by class,
    by length). Needs at least two items.

    Example:
        >>> split_holdout(list(range(6)))
        ([0, 2, 4], [1, 3, 5])
    """
    items = list(items)
    if len(items) < 2:
        raise ValueError(
            f"cannot split {len(items)} eval item(s) into search and held-out parts: pass holdout=... "
            "or at least 2 eval items (batches)"
        )
    held = [x for i, x in enumerate(items) if i % every == every - 1]
    return [x for i, x in enumerate(items) if i % every != every - 1], held
