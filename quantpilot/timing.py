"""Latency measurement that survives noisy shared machines: medians, and side-by-side interleaving.

Example:
    >>> med = median_latency(lambda: sum(range(100)), warmup=1, iters=5)
    >>> med > 0
    True
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

__all__ = ["median_latency", "interleaved_latency", "interleaved_samples"]


def median_latency(fn: Callable[[], object], warmup: int = 3, iters: int = 20) -> float:
    """Median wall time of `fn()` in seconds after `warmup` untimed calls.

    Example:
        >>> median_latency(lambda: None, warmup=0, iters=3) >= 0
        True
    """
    return interleaved_latency({"fn": fn}, warmup, iters)["fn"]


def interleaved_latency(fns: dict[str, Callable[[], object]], warmup: int = 3, iters: int = 20) -> dict[str, float]:
    """Median wall time of each function, timed in turns so drift on the machine hits all alike.

    Args:
        fns: name -> zero-argument callable.
        warmup: untimed rounds first.
        iters: timed rounds.

    Returns:
        name -> median seconds.

    Example:
        >>> sorted(interleaved_latency({"a": lambda: None, "b": lambda: None}, 0, 3))
        ['a', 'b']
    """
    return {name: statistics.median(times) for name, times in interleaved_samples(fns, warmup, iters).items()}


def interleaved_samples(
    fns: dict[str, Callable[[], object]], warmup: int = 3, iters: int = 20
) -> dict[str, list[float]]:
    """Every timed call's wall time in seconds, per function, timed in turns (for percentiles as well as medians).

    Example:
        >>> [len(t) for t in interleaved_samples({"a": lambda: None, "b": lambda: None}, 1, 4).values()]
        [4, 4]
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples
