"""Float-model rewrites that prepare a model for quantization without changing what it computes.

Example:
    >>> import torch
    >>> from quantpilot.transforms import fold_batchnorm
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).eval()
    >>> type(fold_batchnorm(net)[1]).__name__
    'Identity'
"""

from .fold_batchnorm import fold_batchnorm

__all__ = ["fold_batchnorm"]
