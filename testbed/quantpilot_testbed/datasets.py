"""Sentences that ship with the testbed, so calibration and evaluation never touch the network.

`sentences()` returns real English sentences taken from the docstrings of Python's standard
library (see scripts/make_sentences.py): the first 200 are the calibration split, the other
160 are held out for evaluation and never used to calibrate.

Example:
    >>> len(sentences("calibration")), len(sentences("eval"))
    (200, 160)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

__all__ = ["sentences", "CALIBRATION_SIZE"]

CALIBRATION_SIZE = 200
_SENTENCES = Path(__file__).resolve().parent / "data" / "sentences.txt"


@lru_cache(maxsize=1)
def _all_sentences() -> tuple[str, ...]:
    return tuple(line for line in _SENTENCES.read_text().splitlines() if line.strip())


def sentences(split: str = "calibration") -> list[str]:
    """The bundled sentences of one split.

    Args:
        split: "calibration" (200 sentences), "eval" (160 held-out sentences) or "all".

    Returns:
        A new list of strings.

    Example:
        >>> sentences("eval")[0] not in sentences("calibration")
        True
    """
    data = _all_sentences()
    if split == "calibration":
        return list(data[:CALIBRATION_SIZE])
    if split == "eval":
        return list(data[CALIBRATION_SIZE:])
    if split == "all":
        return list(data)
    raise ValueError(f"unknown split {split!r}; use 'calibration', 'eval' or 'all'")
