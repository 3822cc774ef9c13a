"""Quantization methods beyond plain calibration, one file each; each returns a quantized model.

Example:
    >>> from quantpilot import algorithms
    >>> callable(algorithms.smoothquant)
    True
"""

from .smoothquant import smoothquant

__all__ = ["smoothquant"]
