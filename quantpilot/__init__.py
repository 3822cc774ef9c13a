"""quantpilot: quantize PyTorch models and measure what it costs.

Example:
    >>> import quantpilot as qp
    >>> qp.QuantSpec("int8").qmax
    127
"""

from .spec import PerChannel, PerGroup, PerTensor, PerToken, QuantDtype, QuantSpec

__version__ = "0.1.0"

__all__ = ["QuantSpec", "QuantDtype", "PerTensor", "PerChannel", "PerGroup", "PerToken", "__version__"]
