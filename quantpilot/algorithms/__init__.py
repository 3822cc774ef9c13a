"""Quantization methods beyond plain calibration, one file each; each returns a quantized model.

Example:
    >>> from quantpilot import algorithms
    >>> callable(algorithms.smoothquant)
    True
"""

from .awq import awq, awq_fold_scales, find_scale_groups
from .embeddings import quantize_embeddings
from .gptq import gptq
from .llm_int8 import llm_int8, outlier_fraction, reset_outlier_stats
from .rtn import rtn
from .smoothquant import smoothquant

__all__ = [
    "smoothquant",
    "llm_int8",
    "outlier_fraction",
    "reset_outlier_stats",
    "awq",
    "awq_fold_scales",
    "find_scale_groups",
    "rtn",
    "gptq",
    "quantize_embeddings",
]
