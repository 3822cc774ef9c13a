"""Quantized layers and the registry that maps float layers to them.

Example:
    >>> import torch
    >>> from quantpilot.nn import QuantLinear
    >>> QuantLinear.from_float(torch.nn.Linear(2, 2)).in_features
    2
"""

from .conv import QuantConv1d, QuantConv2d, QuantConv3d
from .embedding import QuantEmbedding
from .experts import QuantExperts
from .linear import QuantLinear
from .quant_module import QuantModule
from .registry import QuantizableType, lookup, register, registered_names
from .tensor_quantizer import CalibratorConfig, TensorQuantizer

__all__ = [
    "CalibratorConfig",
    "TensorQuantizer",
    "QuantModule",
    "QuantLinear",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantEmbedding",
    "QuantExperts",
    "QuantizableType",
    "register",
    "lookup",
    "registered_names",
]
